#!/usr/bin/env python3
"""Pushes a Spin app to an OCI registry the way `spin registry push` lays it out, with the
`oras` Python package (a client no one at Outpost wrote): one `application/vnd.wasm.content.
layer.v1+wasm` layer per component, one `...layer.v1+data` layer per file of 128 bytes or more
(smaller files inlined, base64, in the locked app, as Spin does), and the locked app JSON — as a
layer of type `application/vnd.fermyon.spin.application.v1+config` beside an OCI image config
whose `config.Labels` name its digest (Spin 2.3 and later), or with `--old-layout` as the
manifest's config itself (earlier Spins).

Usage: spin-push.py HOST TARGET APP.json [--old-layout]

APP.json describes the app in the shape of `spin.toml` after Spin's loader has read it:
  {"name": ..., "version": ..., "variables": {NAME: {"default"?: ..., "secret"?: bool}},
   "triggers": [{"id": ..., "route": ..., "component": ...}],
   "components": [{"id": ..., "wasm": PATH, "files": {GUEST_PATH: LOCAL_PATH},
                   "key_value_stores": [...], "allowed_outbound_hosts": [...],
                   "config": {...}, "env": {...}}]}
Paths are relative to the directory of APP.json. Prints the locked app it pushed.
"""

import base64
import hashlib
import json
import os
import sys
import tempfile

import oras.client

SPIN_APP = "application/vnd.fermyon.spin.application.v1+config"
WASM = "application/vnd.wasm.content.layer.v1+wasm"
DATA = "application/vnd.wasm.content.layer.v1+data"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
INLINE_MAX = 128  # Spin's DEFAULT_CONTENT_REF_INLINE_MAX_SIZE


def sha256(path):
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def main():
    host, target, app_json = sys.argv[1:4]
    old_layout = "--old-layout" in sys.argv[4:]
    root = os.path.dirname(os.path.abspath(app_json))
    with open(app_json) as f:
        app = json.load(f)
    layers = []  # (path, media type), deduplicated by digest as Spin does

    def layer(path, media_type):
        digest = sha256(path)
        if all(sha256(p) != digest for p, _ in layers):
            layers.append((path, media_type))
        return digest

    components = []
    for c in app["components"]:
        wasm = os.path.join(root, c["wasm"])
        locked = {
            "id": c["id"],
            "metadata": {
                "allowed_outbound_hosts": c.get("allowed_outbound_hosts", []),
                "key_value_stores": c.get("key_value_stores", []),
                "databases": [],
                "ai_models": [],
            },
            "source": {"content_type": "application/wasm", "digest": layer(wasm, WASM)},
        }
        if c.get("env"):
            locked["env"] = c["env"]
        files = []
        for guest_path, local in sorted(c.get("files", {}).items()):
            local = os.path.join(root, local)
            if os.path.getsize(local) < INLINE_MAX:
                with open(local, "rb") as f:
                    inline = base64.b64encode(f.read()).decode()
                files.append({"inline": inline, "path": guest_path})
            else:
                files.append({"digest": layer(local, DATA), "path": guest_path})
        if files:
            locked["files"] = files
        if c.get("config"):
            locked["config"] = c["config"]
        components.append(locked)

    locked_app = {
        "spin_lock_version": 1,
        "must_understand": ["host_requirements"],
        "metadata": {
            "name": app["name"],
            "version": app["version"],
            "authors": ["test"],
            "triggers": {"http": {"base": "/"}},
            "trigger": {"type": "http", "base": "/"},
        },
        "host_requirements": {"local_service_chaining": "optional"},
        "variables": app.get("variables", {}),
        "triggers": [
            {
                "id": t["id"],
                "trigger_type": "http",
                "trigger_config": {"route": t["route"], "component": t["component"]},
            }
            for t in app["triggers"]
        ],
        "components": components,
    }
    work = tempfile.mkdtemp()
    locked_path = os.path.join(work, "spin.lock")
    with open(locked_path, "w") as f:
        json.dump(locked_app, f)
    files = [f"{path}:{media_type}" for path, media_type in layers]
    if old_layout:
        config = f"{locked_path}:{SPIN_APP}"
    else:
        files.append(f"{locked_path}:{SPIN_APP}")
        config_path = os.path.join(work, "config.json")
        with open(config_path, "w") as f:
            json.dump(
                {
                    "architecture": "wasm",
                    "os": "wasip1",
                    "config": {"Labels": {"com.fermyon.spin.lockedAppDigest": sha256(locked_path)}},
                    "rootfs": {"type": "layers", "diff_ids": []},
                },
                f,
            )
        config = f"{config_path}:{IMAGE_CONFIG}"
    client = oras.client.OrasClient(hostname=host, insecure=True)
    client.push(
        target=target, files=files, manifest_config=config, disable_path_validation=True
    )
    print(json.dumps(locked_app))


if __name__ == "__main__":
    main()
