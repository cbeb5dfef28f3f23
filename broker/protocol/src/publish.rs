//! TODO

use bytes::BytesMut;

use crate::{Publish, Version};

impl Publish {
    /// Writes the fixed header, topic, packet id and properties of this
    /// PUBLISH (everything but the payload) so that a writer can send
    /// `self.payload` after it without copying it.
    pub fn encode_header(&self, version: Version, out: &mut BytesMut) {
        todo!("{version:?} {out:?}")
    }
}
