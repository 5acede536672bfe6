//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;

use rustls_pki_types::CertificateDer;

/// A workload's identity as its certificate carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// The control plane's own identity (as istiod's is in `istio-system`).
pub const CONTROL_NAMESPACE: &str = "meshgate-system";
pub const CONTROL_ACCOUNT: &str = "meshgate";

impl SpiffeId {
    /// Checks each part: DNS-label characters only, as Kubernetes names are.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<SpiffeId, String> {
        for (what, v) in
            [("trust domain", trust_domain), ("namespace", namespace), ("service account", service_account)]
        {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && !v.starts_with(['-', '.'])
                && !v.ends_with(['-', '.']);
            if !ok {
                return Err(format!(
                    "{what} {v:?} must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                ));
            }
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        })
    }

    pub fn control_plane(trust_domain: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: CONTROL_NAMESPACE.into(),
            service_account: CONTROL_ACCOUNT.into(),
        }
    }

    /// The edge gateway's identity (as Istio's ingress gateway has its service account).
    pub fn gateway(trust_domain: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.into(),
            namespace: CONTROL_NAMESPACE.into(),
            service_account: "meshgate-gateway".into(),
        }
    }

    pub fn is_control_plane(&self) -> bool {
        self.namespace == CONTROL_NAMESPACE && self.service_account == CONTROL_ACCOUNT
    }

    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => SpiffeId::new(td, ns, sa).ok(),
            _ => None,
        }
    }

    /// The SPIFFE ID in a certificate's URI SANs, if it has exactly one.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<SpiffeId> {
        use x509_parser::extensions::GeneralName;
        use x509_parser::prelude::FromDer as _;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut ids = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        });
        let id = ids.next()?;
        if ids.next().is_some() {
            return None;
        }
        SpiffeId::parse(id)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/user-service").unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "user-service");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/user-service");
        for bad in [
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/a/b",
            "https://cluster.local/ns/default/sa/x",
            "spiffe://cluster.local/ns/Default/sa/x",
            "spiffe://cluster.local/ns//sa/x",
        ] {
            assert!(SpiffeId::parse(bad).is_none(), "{bad}");
        }
        assert!(SpiffeId::new("cluster.local", "default", "a_b").unwrap_err().contains("service account"));
    }
}
