//! kino-cni's inputs: the network configuration on stdin and the `CNI_*` environment.

use kino_cni::spec::args::{AddParams, CniArgs};
use kino_cni::spec::{CniEnv, NetworkConfig, decode_object, peek_version};

use crate::Work;

/// The configuration as `kino-cni` reads it for ADD: version, the checked config, the
/// per-attachment parameters (with empty and with generated CNI_ARGS).
pub fn config(data: &[u8]) -> Work {
    let _ = peek_version(data);
    let _ = NetworkConfig::parse(data);
    if let Ok(object) = decode_object(data) {
        let _ = AddParams::new(&CniArgs::default(), &object);
        if let Ok(args) = CniArgs::parse(Some("IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.9")) {
            let _ = AddParams::new(&args, &object);
        }
    }
    Work { steps: 1, bound: 1 }
}

/// `NAME=VALUE` lines as the environment; `CNI_ARGS` is parsed on its own too.
pub fn env(data: &[u8]) -> Work {
    let text = String::from_utf8_lossy(data);
    let vars: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    };
    let _ = CniEnv::from_lookup(lookup);
    let _ = CniArgs::parse(lookup("CNI_ARGS").as_deref());
    let _ = CniArgs::parse(Some(&text));
    Work { steps: 1, bound: 1 }
}
