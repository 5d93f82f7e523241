//! Settings as the API and an import read them (`PUT /api/settings`,
//! `POST /api/settings/import`): `Settings::parse`, then what an import of another node's file
//! does with them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmesh_core::model::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(settings) = Settings::parse(text) else {
        return;
    };
    let _ = settings.joined_from(&Settings::default());
});
