//! Status and decisions: a route's outcome, the status and Events it calls for (pure), and the
//! thin reconcilers that write them.

pub mod controller;
pub mod events;
pub mod outcome;
pub mod status;
