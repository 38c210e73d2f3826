//! Plans: the wave assignment (pure) and the plan file.

pub mod model;
