//! Integration tests over real HTTP: the real server on a free loopback port, participants
//! that are real servers recording every call.

mod atomikos;
mod bad_input;
mod callbacks;
mod check;
mod choreography;
mod client;
mod docs;
mod failures;
mod helpers;
mod kit;
mod lifecycle;
mod observe;
mod operate;
mod readme;
mod repeats;
mod retention;
mod roles;
mod security;
mod tls;
mod waiting;
