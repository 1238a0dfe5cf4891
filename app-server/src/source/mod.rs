//! An app's uploaded source: safe unpacking and the Procfile that says how to run it.

pub mod pack;
pub mod procfile;
pub mod seal;
pub mod unpack;
