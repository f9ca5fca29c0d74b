//! Typed, prefixed identifiers and the tenant [`Scope`].
//!
//! Ids are `<prefix>_<uuid v7 hex>`: sortable by creation time, unguessable enough for URLs, and
//! self-describing in logs. Parsing checks the prefix so a run id can never be used as an
//! approval id by mistake.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id: expected `{prefix}_` followed by 1 to 64 letters, digits, `-` or `_`")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Parses and validates an id coming from outside.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let err = IdError { kind: $kind, prefix: $prefix };
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or(err.clone())?;
                let ok = !rest.is_empty()
                    && rest.len() <= 64
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if ok { Ok(Self(s.to_owned())) } else { Err(err) }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

prefixed_id!(
    /// A run: one execution of an agent on an input.
    RunId, "run", "run"
);
prefixed_id!(
    /// A pending or decided human approval of one tool call.
    ApprovalId, "apr", "approval"
);
prefixed_id!(
    /// An organization (the top tenant).
    OrgId, "org", "org"
);
prefixed_id!(
    /// A workspace inside an organization; every resource belongs to one.
    WorkspaceId, "ws", "workspace"
);
prefixed_id!(
    /// An API key (its id, never its secret).
    KeyId, "key", "key"
);
prefixed_id!(
    /// An end-user of a SaaS builder, inside a workspace.
    EndUserId, "eu", "end-user"
);
prefixed_id!(
    /// A member: a person who logs in with a password and holds a role in an org.
    MemberId, "usr", "member"
);
prefixed_id!(
    /// A cost budget of a workspace.
    BudgetId, "bud", "budget"
);

/// The tenant a request acts in. Every store method takes one; there is no query without it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub org: OrgId,
    pub workspace: WorkspaceId,
    /// Set when an API key acts for an end-user: everything is narrowed to that end-user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<EndUserId>,
}

impl Scope {
    /// The single org/workspace used until multi-tenancy lands.
    pub fn default_workspace() -> Self {
        Self {
            org: OrgId("org_default".to_owned()),
            workspace: WorkspaceId("ws_default".to_owned()),
            end_user: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_check_prefix() {
        let id = RunId::new();
        assert!(id.as_str().starts_with("run_"));
        assert_eq!(RunId::parse(id.as_str()), Ok(id.clone()));
        assert!(ApprovalId::parse(id.as_str()).is_err());
        assert!(RunId::parse("run_").is_err());
        assert!(RunId::parse("run_a b").is_err());
        assert!(RunId::parse(&format!("run_{}", "a".repeat(65))).is_err());
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(serde_json::from_str::<RunId>(&json).ok(), Some(id));
        assert!(serde_json::from_str::<RunId>("\"apr_x\"").is_err());
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = RunId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = RunId::new();
        assert!(a < b);
    }
}
