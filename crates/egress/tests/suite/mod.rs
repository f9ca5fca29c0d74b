mod support;

mod connect;
mod inject;
mod leaks;
mod plain;
mod private;
mod request;
mod secrets;
mod sink;
mod sni;
