//! Roles, permissions and the one table that says which role may do what.
//!
//! Every authenticated route names one [`Permission`]; the server checks it with [`allowed`] in
//! one place. Roles are ordered (`viewer < operator < developer < admin < owner`) and each role
//! may do everything the roles below it may.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What an API key (later: a member) may do in its workspace. Ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads runs, approvals, agents and secret names.
    Viewer,
    /// A viewer who also starts and cancels runs and decides approvals.
    Operator,
    /// An operator who also registers agents and writes secrets.
    Developer,
    /// A developer who also binds secrets to hosts in agents, manages API keys and workspaces
    /// and reads the audit trail.
    Admin,
    /// Everything, including keys in other workspaces of the org.
    Owner,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::Developer,
        Role::Admin,
        Role::Owner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| {
            format!("unknown role {s:?}; use one of viewer, operator, developer, admin, owner")
        })
    }
}

/// An action on a kind of resource, written `resource:action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Permission {
    #[serde(rename = "runs:create")]
    RunsCreate,
    #[serde(rename = "runs:read")]
    RunsRead,
    #[serde(rename = "runs:cancel")]
    RunsCancel,
    #[serde(rename = "approvals:read")]
    ApprovalsRead,
    #[serde(rename = "approvals:decide")]
    ApprovalsDecide,
    #[serde(rename = "agents:read")]
    AgentsRead,
    #[serde(rename = "agents:write")]
    AgentsWrite,
    /// Secret names and times; values are never readable.
    #[serde(rename = "secrets:read")]
    SecretsRead,
    #[serde(rename = "secrets:write")]
    SecretsWrite,
    /// Registering an agent whose `[[credentials]]` bind secrets: choosing where a secret's
    /// value is sent is reading it, so it is held apart from `secrets:write` and `agents:write`.
    #[serde(rename = "secrets:bind")]
    SecretsBind,
    #[serde(rename = "keys:read")]
    KeysRead,
    #[serde(rename = "keys:write")]
    KeysWrite,
    #[serde(rename = "workspaces:read")]
    WorkspacesRead,
    #[serde(rename = "workspaces:write")]
    WorkspacesWrite,
    /// Rotating the installation's master key (it protects every workspace's secrets).
    #[serde(rename = "vault:rotate")]
    VaultRotate,
    /// Reading and verifying the workspace's audit trail.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Listing the org's members (people who log in with a password).
    #[serde(rename = "members:read")]
    MembersRead,
    /// Adding, changing and removing members.
    #[serde(rename = "members:write")]
    MembersWrite,
    /// Creating organizations: only owners of the installation's first org.
    #[serde(rename = "orgs:write")]
    OrgsWrite,
    /// Reading the workspace's end-users (a SaaS builder's customers).
    #[serde(rename = "end_users:read")]
    EndUsersRead,
    /// Creating, changing and deleting end-users.
    #[serde(rename = "end_users:write")]
    EndUsersWrite,
    /// Reading cost budgets.
    #[serde(rename = "budgets:read")]
    BudgetsRead,
    /// Setting and removing cost budgets.
    #[serde(rename = "budgets:write")]
    BudgetsWrite,
    /// Reading token and cost usage.
    #[serde(rename = "usage:read")]
    UsageRead,
}

impl Permission {
    pub const ALL: [Permission; 24] = [
        Permission::RunsCreate,
        Permission::RunsRead,
        Permission::RunsCancel,
        Permission::ApprovalsRead,
        Permission::ApprovalsDecide,
        Permission::AgentsRead,
        Permission::AgentsWrite,
        Permission::SecretsRead,
        Permission::SecretsWrite,
        Permission::SecretsBind,
        Permission::KeysRead,
        Permission::KeysWrite,
        Permission::WorkspacesRead,
        Permission::WorkspacesWrite,
        Permission::VaultRotate,
        Permission::AuditRead,
        Permission::MembersRead,
        Permission::MembersWrite,
        Permission::OrgsWrite,
        Permission::EndUsersRead,
        Permission::EndUsersWrite,
        Permission::BudgetsRead,
        Permission::BudgetsWrite,
        Permission::UsageRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::RunsCreate => "runs:create",
            Permission::RunsRead => "runs:read",
            Permission::RunsCancel => "runs:cancel",
            Permission::ApprovalsRead => "approvals:read",
            Permission::ApprovalsDecide => "approvals:decide",
            Permission::AgentsRead => "agents:read",
            Permission::AgentsWrite => "agents:write",
            Permission::SecretsRead => "secrets:read",
            Permission::SecretsWrite => "secrets:write",
            Permission::SecretsBind => "secrets:bind",
            Permission::KeysRead => "keys:read",
            Permission::KeysWrite => "keys:write",
            Permission::WorkspacesRead => "workspaces:read",
            Permission::WorkspacesWrite => "workspaces:write",
            Permission::VaultRotate => "vault:rotate",
            Permission::AuditRead => "audit:read",
            Permission::MembersRead => "members:read",
            Permission::MembersWrite => "members:write",
            Permission::OrgsWrite => "orgs:write",
            Permission::EndUsersRead => "end_users:read",
            Permission::EndUsersWrite => "end_users:write",
            Permission::BudgetsRead => "budgets:read",
            Permission::BudgetsWrite => "budgets:write",
            Permission::UsageRead => "usage:read",
        }
    }

    /// Whether a request holding this permission may act for an end-user
    /// (`Paddock-End-User`): the routes whose data narrows to one end-user. Managing the
    /// workspace (keys, members, budgets, the audit trail…) never acts for one.
    pub fn acts_for_end_user(self) -> bool {
        matches!(
            self,
            Permission::RunsCreate
                | Permission::RunsRead
                | Permission::RunsCancel
                | Permission::ApprovalsRead
                | Permission::ApprovalsDecide
                | Permission::AgentsRead
                | Permission::SecretsRead
                | Permission::SecretsWrite
                | Permission::UsageRead
        )
    }

    /// THE permission table: the least role that holds each permission.
    pub fn least_role(self) -> Role {
        match self {
            Permission::RunsRead
            | Permission::ApprovalsRead
            | Permission::AgentsRead
            | Permission::SecretsRead
            | Permission::EndUsersRead
            | Permission::BudgetsRead
            | Permission::UsageRead => Role::Viewer,
            Permission::RunsCreate | Permission::RunsCancel | Permission::ApprovalsDecide => {
                Role::Operator
            }
            Permission::AgentsWrite | Permission::SecretsWrite | Permission::EndUsersWrite => {
                Role::Developer
            }
            Permission::KeysRead
            | Permission::KeysWrite
            | Permission::WorkspacesRead
            | Permission::WorkspacesWrite
            | Permission::AuditRead
            | Permission::MembersRead
            | Permission::MembersWrite
            | Permission::BudgetsWrite
            // A developer writes secrets and registers agents, but binding a secret to a host
            // sends its value there: a developer could bind an owner's secret to a host they
            // control and read it. Only admins and owners pick where secrets go.
            | Permission::SecretsBind => Role::Admin,
            Permission::VaultRotate | Permission::OrgsWrite => Role::Owner,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `role` holds `permission`: the only question the server asks.
pub fn allowed(role: Role, permission: Permission) -> bool {
    role >= permission.least_role()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Developer);
        assert!(Role::Developer > Role::Operator && Role::Operator > Role::Viewer);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        for p in Permission::ALL {
            let json = serde_json::to_string(&p).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
    }

    #[test]
    fn owner_holds_everything_and_viewer_only_reads() {
        for p in Permission::ALL {
            assert!(allowed(Role::Owner, p), "{p}");
            let read = p.as_str().ends_with(":read");
            let admin_only = p.as_str().starts_with("keys:")
                || p.as_str().starts_with("workspaces:")
                || p.as_str().starts_with("audit:")
                || p.as_str().starts_with("members:");
            assert_eq!(allowed(Role::Viewer, p), read && !admin_only, "{p}");
        }
    }

    #[test]
    fn only_admins_and_owners_may_bind_secrets_to_hosts() {
        // A developer may write a secret's value and register agents, but not choose where an
        // existing secret is sent (issue 19, item 4).
        for role in Role::ALL {
            assert_eq!(
                allowed(role, Permission::SecretsBind),
                role >= Role::Admin,
                "{role}"
            );
        }
        assert!(allowed(Role::Developer, Permission::AgentsWrite));
        assert!(allowed(Role::Developer, Permission::SecretsWrite));
    }
}
