//! `spin.toml` text from an app directory: parsing and mapping never panic, and whatever maps is
//! an `outpost.toml` that parses back to the very manifest the app is loaded as.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::bundle::manifest::Manifest;
use outpost::bundle::spin::SpinApp;

/// The app directory the `files` globs are matched against.
const FILES: &[&str] = &[
    "spin.toml",
    "app.wasm",
    "static/a.txt",
    "static/sub/b.txt",
    "docs/x.md",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(app) = SpinApp::parse(text, "fuzz/spin.toml") else {
        return;
    };
    let files: Vec<String> = FILES.iter().map(|f| (*f).to_owned()).collect();
    if let Ok(c) = app.convert(&files) {
        let again = Manifest::parse(&c.text, "fuzz/outpost.toml").expect("converted text parses");
        assert_eq!(again, c.manifest, "{}", c.text);
    }
});
