//! The durable runtime: instances, tasks, jobs, and the engine that runs them.

pub mod connector;
