//! Dialects: codecs that turn a transport's frames into calls of [`crate::chat::Chat`] and
//! its replies and events back into frames. They hold no chat logic of their own.

pub mod plain;
