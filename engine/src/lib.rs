//! The tramite engine: process definitions (model, YAML loader, validation,
//! diagrams) and the durable runtime that runs them (instances, tasks, jobs,
//! messages, incidents) on SQLite or PostgreSQL.
//!
//! The engine is a library with no knowledge of HTTP, of any particular
//! procedure, or of any particular external system: connectors describe
//! themselves through a [`catalog::Catalog`] that the caller passes in.

pub mod catalog;
pub mod definition;
pub mod diagnostic;
pub mod diagram;
pub mod duration;
mod error;
pub mod expr;
pub mod library;
pub mod loader;
pub mod position;
pub mod runtime;
pub mod schema;
pub mod store;
pub mod text;
pub mod validate;

pub use error::Error;
