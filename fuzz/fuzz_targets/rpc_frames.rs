//! A request stream's bytes, as the mesh reads them: frames (`[length][id][JSON]`), each read
//! as a request and as an answer, until the stream ends or its framing fails.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmesh_mesh::wire::{decode_request, decode_response, read_frame};

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    futures::executor::block_on(async {
        while let Ok(Some((_id, body))) = read_frame(&mut stream).await {
            let _ = decode_request(&body);
            let _ = decode_response(&body);
        }
    });
});
