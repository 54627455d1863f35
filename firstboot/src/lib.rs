pub mod cluster;
pub mod facts;
pub mod source;
