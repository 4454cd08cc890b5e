//! Test support: scratch network namespaces, packet builders, running the
//! XDP programs through BPF_PROG_TEST_RUN, and a reference parser written
//! independently of the data plane to judge its output.

pub mod bgp;
pub mod checks;
pub mod demo;
pub mod deploy;
pub mod edge;
pub mod etcd;
pub mod flood;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod programs;
pub mod reference;
pub mod run;
pub mod scale;
pub mod server;
pub mod traffic;
