//! A peer's consensus request and answer (the JSON inside the mesh's `Raft` request and
//! answer), as the consensus layer reads them; the changes a request carries (appended entries,
//! a forwarded proposal) are then applied to a state, as the state machine would once they are
//! committed: `State::apply` refuses or takes any change, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmesh_consensus::State;
use taskmesh_consensus::raft::network::{RaftRpc, decode_reply, decode_rpc};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = decode_reply(text);
    let Ok(rpc) = decode_rpc(text) else {
        return;
    };
    let changes = match rpc {
        RaftRpc::Append(request) => request
            .entries
            .into_iter()
            .filter_map(|entry| match entry.payload {
                openraft::EntryPayload::Normal(change) => Some(change),
                _ => None,
            })
            .collect(),
        RaftRpc::Propose(change) => vec![*change],
        _ => vec![],
    };
    let mut state = State::default();
    for change in changes {
        let before = state.clone();
        if state.apply(change).is_err() {
            assert_eq!(state, before, "a refused change changed the state");
        }
    }
    let _ = state.digest();
});
