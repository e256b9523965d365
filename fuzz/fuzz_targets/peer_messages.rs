#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_raft_backend::fuzzing::peer_message(data));
