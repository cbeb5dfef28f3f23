//! Native I/O behind the capabilities plugins are granted: the host checks
//! the grant, these modules do the work off the plugin's call.

pub mod kafka;
