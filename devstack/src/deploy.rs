//! `make image` renders the mesh manifests (`deploy/`) with what the build
//! produced: the OCI image's digest and the shipped filter configuration,
//! its identity cluster named as each platform names it.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::envoy::{repo_root, shipped_filter_config};
use crate::tokens::Error;

/// The cluster Istio makes for the identity service's ServiceEntry.
pub const ISTIO_IDENTITY_CLUSTER: &str = "outbound|443||idp.erp.test";

/// The OCI image layout `make image` writes.
pub fn image_layout() -> PathBuf {
    repo_root().join("target/image/layout")
}

/// The image's manifest digest (`sha256:…`), from the layout's index.
pub fn image_digest(layout: &Path) -> Result<String, Error> {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let manifests = index["manifests"].as_array().ok_or("index.json has no manifests")?;
    if manifests.len() != 1 {
        return Err(format!("index.json lists {} manifests, not one", manifests.len()).into());
    }
    Ok(manifests[0]["digest"]
        .as_str()
        .ok_or("a manifest without a digest")?
        .to_owned())
}

/// The shipped configuration with its identity cluster renamed.
pub fn plugin_config(identity_cluster: &str) -> Result<Value, Error> {
    let mut config = shipped_filter_config()?;
    for part in ["remote_jwks", "introspection"] {
        if let Some(cluster) = config.get_mut(part).and_then(|p| p.get_mut("cluster")) {
            *cluster = Value::String(identity_cluster.into());
        }
    }
    Ok(config)
}

/// Renders `deploy/` into `target/deploy/`; returns the files written.
pub fn render() -> Result<Vec<PathBuf>, Error> {
    let digest = image_digest(&image_layout())?;
    let sha = digest
        .strip_prefix("sha256:")
        .ok_or("the digest is not sha256")?
        .to_owned();
    let version = env!("CARGO_PKG_VERSION");
    let mut written = Vec::new();
    for (template, cluster) in [
        ("istio/wasmplugin.yaml", ISTIO_IDENTITY_CLUSTER),
        ("istio/identity-service.yaml", ISTIO_IDENTITY_CLUSTER),
        ("envoy-gateway/extension-policy.yaml", "identity"),
        ("envoy-gateway/extension-policy-native.yaml", "identity"),
    ] {
        let text = fs::read_to_string(repo_root().join("deploy").join(template))?;
        let rendered = text
            .replace("{{IMAGE_DIGEST}}", &digest)
            .replace("{{IMAGE_SHA256}}", &sha)
            .replace("{{VERSION}}", version)
            // JSON is YAML: the configuration goes in as one flow mapping.
            .replace("{{PLUGIN_CONFIG}}", &plugin_config(cluster)?.to_string());
        if rendered.contains("{{") {
            return Err(format!("deploy/{template} has a placeholder left").into());
        }
        let out = repo_root().join("target/deploy").join(template);
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&out, rendered)?;
        written.push(out);
    }
    Ok(written)
}
