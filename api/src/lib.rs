//! The HTTP API of tramite (`tramite serve`): the router, its errors as
//! problem+json, and bearer-token authentication. The binary in `main.rs`
//! wires it to an engine.

pub mod http;
