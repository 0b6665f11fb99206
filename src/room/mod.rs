//! What every backend shares about the room, apart from any one backend: the plan's step
//! type, running steps, status rows and their table, a reset's result, the lock that lets
//! one mutating cowctl work at a time, and which backend serves a manifest. The kernel
//! backend (`control`) and the service (`service`) both build on it.

pub mod choose;
pub mod lock;
pub mod reset;
pub mod status;
pub mod step;
pub mod steps;
