//! The resource kinds meshgate accepts, with their Istio names, plurals,
//! short names and API versions.

/// A resource kind. The set is closed: anything else is rejected with the
/// list of supported kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    PeerAuthentication,
    RequestAuthentication,
    AuthorizationPolicy,
    Secret,
    TrafficSplit,
    RateLimitPolicy,
    Consumer,
    ApiKeyAuth,
    RequestSizeLimit,
    GrpcTranscoder,
    Telemetry,
}

const NETWORKING: &[&str] = &["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];
const SECURITY: &[&str] = &["security.istio.io/v1", "security.istio.io/v1beta1"];
const CORE: &[&str] = &["v1"];
const MESHGATE: &[&str] = &["meshgate.io/v1"];
const TELEMETRY: &[&str] = &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"];

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::Gateway,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::PeerAuthentication,
        Kind::RequestAuthentication,
        Kind::AuthorizationPolicy,
        Kind::Secret,
        Kind::TrafficSplit,
        Kind::RateLimitPolicy,
        Kind::Consumer,
        Kind::ApiKeyAuth,
        Kind::RequestSizeLimit,
        Kind::GrpcTranscoder,
        Kind::Telemetry,
    ];

    /// The `kind:` string, e.g. `VirtualService`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Secret => "Secret",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::Consumer => "Consumer",
            Kind::ApiKeyAuth => "ApiKeyAuth",
            Kind::RequestSizeLimit => "RequestSizeLimit",
            Kind::GrpcTranscoder => "GrpcTranscoder",
            Kind::Telemetry => "Telemetry",
        }
    }

    /// The plural used in REST paths, e.g. `virtualservices`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Gateway => "gateways",
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::ServiceEntry => "serviceentries",
            Kind::WorkloadEntry => "workloadentries",
            Kind::PeerAuthentication => "peerauthentications",
            Kind::RequestAuthentication => "requestauthentications",
            Kind::AuthorizationPolicy => "authorizationpolicies",
            Kind::Secret => "secrets",
            Kind::TrafficSplit => "trafficsplits",
            Kind::RateLimitPolicy => "ratelimitpolicies",
            Kind::Consumer => "consumers",
            Kind::ApiKeyAuth => "apikeyauths",
            Kind::RequestSizeLimit => "requestsizelimits",
            Kind::GrpcTranscoder => "grpctranscoders",
            Kind::Telemetry => "telemetries",
        }
    }

    /// Short names as `kubectl` and `istioctl` know them.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Gateway => &["gw"],
            Kind::VirtualService => &["vs"],
            Kind::DestinationRule => &["dr"],
            Kind::ServiceEntry => &["se"],
            Kind::WorkloadEntry => &["we"],
            Kind::PeerAuthentication => &["pa"],
            Kind::RequestAuthentication => &["ra"],
            Kind::AuthorizationPolicy => &["ap"],
            Kind::Secret => &[],
            Kind::TrafficSplit => &["ts"],
            Kind::RateLimitPolicy => &["rlp"],
            Kind::Consumer => &[],
            Kind::ApiKeyAuth => &["aka"],
            Kind::RequestSizeLimit => &["rsl"],
            Kind::GrpcTranscoder => &["gt"],
            Kind::Telemetry => &[],
        }
    }

    /// Accepted `apiVersion` values; the first is the one meshgate stores and prints.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Gateway | Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry | Kind::WorkloadEntry => {
                NETWORKING
            }
            Kind::PeerAuthentication | Kind::RequestAuthentication | Kind::AuthorizationPolicy => SECURITY,
            Kind::Secret => CORE,
            Kind::TrafficSplit
            | Kind::RateLimitPolicy
            | Kind::Consumer
            | Kind::ApiKeyAuth
            | Kind::RequestSizeLimit
            | Kind::GrpcTranscoder => MESHGATE,
            Kind::Telemetry => TELEMETRY,
        }
    }

    pub fn api_version(self) -> &'static str {
        self.api_versions()[0]
    }

    /// Looks a kind up by its name, plural, singular or short name, in any case.
    pub fn lookup(word: &str) -> Option<Kind> {
        let w = word.to_ascii_lowercase();
        Kind::ALL.into_iter().find(|k| {
            let name = k.name().to_ascii_lowercase();
            w == name || w == k.plural() || k.short_names().contains(&w.as_str())
        })
    }

    /// Like [`Kind::lookup`], with an error that lists what is accepted.
    pub fn parse(word: &str) -> Result<Kind, String> {
        Kind::lookup(word).ok_or_else(|| format!("unknown kind {word:?}; supported kinds: {}", Kind::supported_list()))
    }

    /// `Gateway (gw), VirtualService (vs), ...` for error messages.
    pub fn supported_list() -> String {
        Kind::ALL
            .iter()
            .map(|k| match k.short_names().first() {
                Some(s) => format!("{} ({s})", k.name()),
                None => k.name().to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_finds_the_kind() {
        for k in Kind::ALL {
            assert_eq!(Kind::lookup(k.name()), Some(k));
            assert_eq!(Kind::lookup(k.plural()), Some(k));
            for s in k.short_names() {
                assert_eq!(Kind::lookup(s), Some(k));
            }
        }
        assert_eq!(Kind::lookup("VS"), Some(Kind::VirtualService));
        let err = Kind::parse("virtualsvc").unwrap_err();
        assert!(err.contains("VirtualService (vs)"), "{err}");
    }
}
