//! Only a placeholder so the agent can depend on this crate for rebuilds;
//! the programs are in main.rs.
#![no_std]
