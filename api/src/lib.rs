//! The HTTP API of tramite (`tramite serve`): the router, its errors as
//! problem+json, bearer-token authentication, and the web UI's pages. The
//! binary in `main.rs` wires it to an engine.

pub mod http;
pub mod web;
