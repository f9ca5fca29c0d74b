mod support;

mod connect;
mod plain;
mod private;
mod request;
mod sink;
