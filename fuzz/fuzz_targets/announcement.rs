//! A gossiped announcement, as the mesh reads it from its sender `source`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmesh_mesh::wire::decode_announcement;

const SOURCE: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

fuzz_target!(|data: &[u8]| {
    if let Ok(announcement) = decode_announcement(data, SOURCE) {
        assert_eq!(announcement.peer_id, SOURCE);
        assert!(announcement.check().is_ok());
    }
});
