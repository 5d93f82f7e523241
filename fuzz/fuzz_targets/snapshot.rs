//! A snapshot's bytes, as a follower reads the one its leader sends; a state that decodes has a
//! digest and reads back from its own JSON with the same one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmesh_consensus::State;
use taskmesh_consensus::raft::state_machine::decode_snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = decode_snapshot(data) else {
        return;
    };
    let json = serde_json::to_vec(&payload.state).expect("a state serialises");
    let back: State = serde_json::from_slice(&json).expect("a state reads back");
    assert_eq!(back.digest(), payload.state.digest());
});
