//! The host side of `wasi:keyvalue` (store, atomics, batch), `fermyon:spin/key-value@2.0.0` and
//! `fermyon:spin/variables@2.0.0`, bound from the WIT in `src/runtime/kv/wit` (wasmtime's
//! `wasmtime-wasi-keyvalue` keeps its bindings private and serves an in-memory map only).
//!
//! Guest input never traps: a store the component was not granted is the interface's
//! `access-denied`, limits and quotas are `other(message)`. Only a handle that is not in the
//! instance's table (a host bug or a forged handle) traps, as wasmtime's own interfaces do.

use std::collections::HashMap;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{KvAccess, KvError, OpenStore};

mod generated {
    wasmtime::component::bindgen!({
        path: "src/runtime/kv/wit",
        world: "outpost:host/kv",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::runtime::kv::OpenStore,
            "fermyon:spin/key-value.store": crate::runtime::kv::OpenStore,
        },
    });
}

use generated::fermyon::spin::{key_value as spin_kv, variables as spin_vars};
use generated::wasi::keyvalue::{atomics, batch, store};

/// Keys one `list-keys` page of `wasi:keyvalue` returns.
const LIST_PAGE: usize = 1000;
/// Stores one instance may hold open at once (Spin's `store-table-full`); a guest opening in a
/// loop without closing must not grow the table without bound.
const MAX_OPEN_STORES: usize = 256;

/// What the interfaces reach of one request's state.
pub struct KvView<'a> {
    pub table: &'a mut ResourceTable,
    pub access: &'a KvAccess,
    /// The component's variables (`fermyon:spin/variables`).
    pub variables: &'a HashMap<String, String>,
    /// Stores this instance holds open.
    pub open: &'a mut usize,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Adds the three interfaces to `linker`; `view` gives them their part of the store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, view)?;
    atomics::add_to_linker::<T, HasKv>(linker, view)?;
    batch::add_to_linker::<T, HasKv>(linker, view)?;
    spin_kv::add_to_linker::<T, HasKv>(linker, view)?;
    spin_vars::add_to_linker::<T, HasKv>(linker, view)?;
    Ok(())
}

/// Why an open did not give a store.
enum OpenError {
    Denied,
    TableFull,
    Kv(KvError),
}

impl KvView<'_> {
    fn open(&mut self, label: &str) -> wasmtime::Result<Result<Resource<OpenStore>, OpenError>> {
        if *self.open >= MAX_OPEN_STORES {
            return Ok(Err(OpenError::TableFull));
        }
        match self.access.open(label) {
            Ok(Some(s)) => {
                *self.open += 1;
                Ok(Ok(self.table.push(s)?))
            }
            Ok(None) => Ok(Err(OpenError::Denied)),
            Err(e) => Ok(Err(OpenError::Kv(e))),
        }
    }

    fn store(&self, r: &Resource<OpenStore>) -> wasmtime::Result<OpenStore> {
        Ok(self.table.get(r)?.clone())
    }

    fn close(&mut self, r: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        *self.open = self.open.saturating_sub(1);
        Ok(())
    }
}

// === impl wasi:keyvalue ===

fn wasi_err(e: KvError) -> store::Error {
    store::Error::Other(e.guest_message())
}

impl store::Host for KvView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, store::Error>> {
        Ok(KvView::open(self, &identifier)?.map_err(|e| match e {
            OpenError::Denied => store::Error::AccessDenied,
            OpenError::TableFull => store::Error::Other("too many open stores".into()),
            OpenError::Kv(e) => wasi_err(e),
        }))
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        Ok(self.store(&bucket)?.get(&key).await.map_err(wasi_err))
    }

    async fn set(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self
            .store(&bucket)?
            .set(&key, &value)
            .await
            .map_err(wasi_err))
    }

    async fn delete(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self.store(&bucket)?.delete(&key).await.map_err(wasi_err))
    }

    async fn exists(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        Ok(self.store(&bucket)?.exists(&key).await.map_err(wasi_err))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<OpenStore>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let keys = match self.store(&bucket)?.keys().await {
            Ok(k) => k,
            Err(e) => return Ok(Err(wasi_err(e))),
        };
        // The cursor is the index of the page's first key; a guest's cursor past the end is
        // an empty last page.
        let start = usize::try_from(cursor.unwrap_or(0))
            .unwrap_or(usize::MAX)
            .min(keys.len());
        let end = start.saturating_add(LIST_PAGE).min(keys.len());
        Ok(Ok(store::KeyResponse {
            keys: keys[start..end].to_vec(),
            cursor: (end < keys.len()).then_some(end as u64),
        }))
    }

    async fn drop(&mut self, bucket: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.close(bucket)
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<OpenStore>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        Ok(self
            .store(&bucket)?
            .increment(&key, delta)
            .await
            .map_err(wasi_err))
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
        let s = self.store(&bucket)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match s.get(&key).await {
                Ok(v) => out.push(v.map(|v| (key, v))),
                Err(e) => return Ok(Err(wasi_err(e))),
            }
        }
        Ok(Ok(out))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenStore>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self
            .store(&bucket)?
            .set_many(&key_values)
            .await
            .map_err(wasi_err))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<OpenStore>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        Ok(self
            .store(&bucket)?
            .delete_many(&keys)
            .await
            .map_err(wasi_err))
    }
}

// === impl fermyon:spin/key-value ===

fn spin_err(e: KvError) -> spin_kv::Error {
    spin_kv::Error::Other(e.guest_message())
}

impl spin_kv::Host for KvView<'_> {}

impl spin_kv::HostStore for KvView<'_> {
    async fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, spin_kv::Error>> {
        Ok(KvView::open(self, &label)?.map_err(|e| match e {
            OpenError::Denied => spin_kv::Error::AccessDenied,
            OpenError::TableFull => spin_kv::Error::StoreTableFull,
            OpenError::Kv(e) => spin_err(e),
        }))
    }

    async fn get(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, spin_kv::Error>> {
        Ok(self.store(&store)?.get(&key).await.map_err(spin_err))
    }

    async fn set(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(self
            .store(&store)?
            .set(&key, &value)
            .await
            .map_err(spin_err))
    }

    async fn delete(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), spin_kv::Error>> {
        Ok(self.store(&store)?.delete(&key).await.map_err(spin_err))
    }

    async fn exists(
        &mut self,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, spin_kv::Error>> {
        Ok(self.store(&store)?.exists(&key).await.map_err(spin_err))
    }

    async fn get_keys(
        &mut self,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<Result<Vec<String>, spin_kv::Error>> {
        Ok(self.store(&store)?.keys().await.map_err(spin_err))
    }

    async fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.close(store)
    }
}

// === impl fermyon:spin/variables ===

/// Spin's variable-name rule: lowercase letters, digits and `_`, starting with a letter.
fn is_spin_variable_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

impl spin_vars::Host for KvView<'_> {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, spin_vars::Error>> {
        if !is_spin_variable_name(&name) {
            return Ok(Err(spin_vars::Error::InvalidName(format!(
                "{name:?}: expected lowercase letters, digits and '_', starting with a letter"
            ))));
        }
        Ok(self
            .variables
            .get(&name)
            .cloned()
            .ok_or(spin_vars::Error::Undefined(name)))
    }
}
