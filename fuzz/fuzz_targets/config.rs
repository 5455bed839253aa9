//! A node's configuration file: TOML parsed into the node's settings
//! ([`trm_node::config::NodeConfig::parse`]), relative paths resolved, then validated for
//! meaning (bounds, log filter, storage, peers), as `trm-node` does at start-up. Files named
//! by the configuration are looked up under a folder that does not exist.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trm_node::config::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut cfg) = NodeConfig::parse(text) else {
        return;
    };
    cfg.resolve(std::path::Path::new("/nonexistent/trm-fuzz"));
    let _ = cfg.validate();
    let _ = cfg.pg_schema();
});
