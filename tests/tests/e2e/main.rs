//! The end-to-end suite as one test binary: each module is one area of the
//! broker, driven by real clients over real sockets. One binary links once
//! (each is ~0.5 GB in a debug build) instead of once per area.

mod admin;
mod admin_dashboard;
mod anonymous;
mod api_rules;
mod bridge;
mod cluster;
mod cluster_faults;
mod cluster_sessions;
mod cluster_suback;
mod connect;
mod dashboard;
mod descriptors;
mod enhanced_auth;
mod flow_control;
mod interop_mosquitto;
mod interop_paho;
mod keepalive;
mod limits_listener;
mod logs;
mod operating;
mod park;
mod passwd;
mod persist_kafka;
mod persist_postgres;
mod persist_sled;
mod persistence;
mod plugin_outputs;
mod plugin_reload;
mod plugin_tools;
mod plugins;
mod qos;
mod retain;
mod rules;
mod rules_emqx;
mod session;
mod shared;
mod store_tools;
mod subscriptions;
mod tls;
mod v5_features;
mod violations;
mod websocket;
mod will;
