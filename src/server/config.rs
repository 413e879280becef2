//! Who exists on the registry: users (with passwords and personal access
//! tokens) and organisations (with members), read from the `--config` TOML
//! file or made up as a single default user. Gitea keeps these in its
//! database; `pkgfs serve` takes them from configuration so tests can set up
//! any access situation of PROTOCOL.md §auth and §access declaratively.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Visibility of a user or organisation (PROTOCOL.md §access).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Public,
    Limited,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Limited => "limited",
            Visibility::Private => "private",
        }
    }
}

/// A member's role in an organisation: its team's package access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Owner,
}

/// Scope categories of Gitea's personal access tokens that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    Package,
    User,
    Organization,
}

impl Category {
    fn as_str(self) -> &'static str {
        match self {
            Category::Package => "package",
            Category::User => "user",
            Category::Organization => "organization",
        }
    }
}

/// The scopes of a token: `all`, or `read:X` / `write:X` per category
/// (`write` implies `read`).
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    all: bool,
    granted: Vec<(Category, bool)>,
    /// The scopes as configured, for error messages.
    pub text: String,
}

impl Scopes {
    fn parse(list: &[String]) -> anyhow::Result<Scopes> {
        let mut s = Scopes {
            text: list.join(","),
            ..Scopes::default()
        };
        for item in list {
            if item == "all" {
                s.all = true;
                continue;
            }
            let Some((level, cat)) = item.split_once(':') else {
                bail!("unknown token scope {item:?}");
            };
            let write = match level {
                "read" => false,
                "write" => true,
                _ => bail!("unknown token scope {item:?}"),
            };
            let cat = match cat {
                "package" => Category::Package,
                "user" => Category::User,
                "organization" => Category::Organization,
                _ => bail!("unknown token scope {item:?}"),
            };
            s.granted.push((cat, write));
        }
        Ok(s)
    }

    /// Whether the token may read (`write == false`) or write `cat`.
    pub fn allows(&self, cat: Category, write: bool) -> bool {
        self.all || self.granted.iter().any(|&(c, w)| c == cat && (w || !write))
    }

    /// Gitea's name of the scope an operation needs, e.g. `read:package`.
    pub fn required_name(cat: Category, write: bool) -> String {
        format!("{}:{}", if write { "write" } else { "read" }, cat.as_str())
    }
}

/// A user account.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub created_unix: i64,
    pub name: String,
    pub lower: String,
    pub password: Option<String>,
    pub email: String,
    pub visibility: Visibility,
    pub admin: bool,
    /// Active and not prohibited from signing in: otherwise the account
    /// gets no access anywhere (PROTOCOL.md §access), though its credentials
    /// are valid.
    pub may_sign_in: bool,
}

/// An organisation.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: i64,
    pub created_unix: i64,
    pub name: String,
    pub lower: String,
    pub visibility: Visibility,
    /// Lower-cased user name → role.
    pub members: HashMap<String, Role>,
}

/// A personal access token.
#[derive(Debug, Clone)]
pub struct Token {
    /// Lower-cased name of the user it belongs to.
    pub user: String,
    pub scopes: Scopes,
    pub public_only: bool,
}

/// A package owner: a user or an organisation.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    User(&'a Account),
    Org(&'a Org),
}

impl Owner<'_> {
    pub fn id(&self) -> i64 {
        match self {
            Owner::User(u) => u.id,
            Owner::Org(o) => o.id,
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Owner::User(u) => &u.name,
            Owner::Org(o) => &o.name,
        }
    }
    pub fn created_unix(&self) -> i64 {
        match self {
            Owner::User(u) => u.created_unix,
            Owner::Org(o) => o.created_unix,
        }
    }
    pub fn visibility(&self) -> Visibility {
        match self {
            Owner::User(u) => u.visibility,
            Owner::Org(o) => o.visibility,
        }
    }
}

/// All users, organisations and tokens.
#[derive(Debug, Default)]
pub struct Directory {
    users: Vec<Account>,
    orgs: Vec<Org>,
    tokens: HashMap<String, Token>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    users: Vec<UserConfig>,
    #[serde(default)]
    orgs: Vec<OrgConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserConfig {
    name: String,
    password: Option<String>,
    email: Option<String>,
    #[serde(default)]
    visibility: Visibility,
    #[serde(default)]
    admin: bool,
    /// Gitea's `is_active` (e-mail confirmed or activated by an admin).
    #[serde(default = "yes")]
    active: bool,
    /// Gitea's `prohibit_login`.
    #[serde(default)]
    prohibit_login: bool,
    #[serde(default)]
    tokens: Vec<TokenConfig>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenConfig {
    value: Option<String>,
    value_env: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default)]
    public_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgConfig {
    name: String,
    #[serde(default)]
    visibility: Visibility,
    #[serde(default)]
    members: Vec<MemberConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberConfig {
    user: String,
    role: Role,
}

impl Directory {
    /// Reads the `--config` file.
    pub fn load(path: &Path) -> anyhow::Result<Directory> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: FileConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Directory::from_config(cfg)
    }

    /// The default set-up: one public user, one `all`-scoped token if given.
    pub fn single_user(name: &str, token: Option<String>) -> anyhow::Result<Directory> {
        if token.is_none() {
            tracing::warn!(
                "PKGFS_SERVE_TOKEN is not set: user {name} has no token, only anonymous reads work"
            );
        }
        Directory::from_config(FileConfig {
            users: vec![UserConfig {
                name: name.to_string(),
                password: None,
                email: None,
                visibility: Visibility::Public,
                admin: false,
                active: true,
                prohibit_login: false,
                tokens: token
                    .map(|value| TokenConfig {
                        value: Some(value),
                        value_env: None,
                        scopes: None,
                        public_only: false,
                    })
                    .into_iter()
                    .collect(),
            }],
            orgs: vec![],
        })
    }

    fn from_config(cfg: FileConfig) -> anyhow::Result<Directory> {
        let mut dir = Directory::default();
        let mut names = std::collections::HashSet::new();
        let mut check_name = |name: &str| -> anyhow::Result<String> {
            let lower = name.to_lowercase();
            if name.is_empty() || name.contains(['/', '\\', '%', '?', '#']) || name.trim() != name {
                bail!("invalid user or organisation name {name:?}");
            }
            if !names.insert(lower.clone()) {
                bail!("duplicate user or organisation name {name:?}");
            }
            Ok(lower)
        };
        for u in cfg.users {
            let lower = check_name(&u.name)?;
            for t in u.tokens {
                let value = match (t.value, t.value_env) {
                    (Some(v), None) => v,
                    (None, Some(var)) => std::env::var(&var).with_context(|| {
                        format!(
                            "token of user {}: environment variable {var} is not set",
                            u.name
                        )
                    })?,
                    _ => bail!(
                        "token of user {}: give exactly one of `value` and `value_env`",
                        u.name
                    ),
                };
                if value.is_empty() {
                    bail!("token of user {} is empty", u.name);
                }
                let scopes = Scopes::parse(&t.scopes.unwrap_or_else(|| vec!["all".into()]))?;
                let token = Token {
                    user: lower.clone(),
                    scopes,
                    public_only: t.public_only,
                };
                if dir.tokens.insert(value, token).is_some() {
                    bail!("the same token value is configured twice");
                }
            }
            dir.users.push(Account {
                id: 0,
                created_unix: 0,
                email: u
                    .email
                    .unwrap_or_else(|| format!("{lower}@noreply.localhost")),
                name: u.name,
                lower,
                password: u.password,
                visibility: u.visibility,
                admin: u.admin,
                may_sign_in: u.active && !u.prohibit_login,
            });
        }
        let user_names: Vec<String> = dir.users.iter().map(|u| u.lower.clone()).collect();
        for o in cfg.orgs {
            let lower = check_name(&o.name)?;
            let mut members = HashMap::new();
            for m in o.members {
                let ml = m.user.to_lowercase();
                if !user_names.contains(&ml) {
                    bail!("organisation {}: unknown member {:?}", o.name, m.user);
                }
                members.insert(ml, m.role);
            }
            dir.orgs.push(Org {
                id: 0,
                created_unix: 0,
                name: o.name,
                lower,
                visibility: o.visibility,
                members,
            });
        }
        Ok(dir)
    }

    /// Gives every user and organisation its stable id and creation time
    /// (from the database).
    pub fn assign_ids(
        &mut self,
        mut id_of: impl FnMut(&str) -> anyhow::Result<(i64, i64)>,
    ) -> anyhow::Result<()> {
        for u in &mut self.users {
            (u.id, u.created_unix) = id_of(&u.name)?;
        }
        for o in &mut self.orgs {
            (o.id, o.created_unix) = id_of(&o.name)?;
        }
        Ok(())
    }

    /// The owner with this name, case-insensitively.
    pub fn owner(&self, name: &str) -> Option<Owner<'_>> {
        let lower = name.to_lowercase();
        if let Some(u) = self.user(&lower) {
            return Some(Owner::User(u));
        }
        self.orgs.iter().find(|o| o.lower == lower).map(Owner::Org)
    }

    /// The user with this lower-cased name.
    pub fn user(&self, lower: &str) -> Option<&Account> {
        self.users.iter().find(|u| u.lower == lower)
    }

    /// The user (not organisation) with this id.
    pub fn user_by_id(&self, id: i64) -> Option<&Account> {
        self.users.iter().find(|u| u.id == id)
    }

    /// Password login: by user name (case-insensitive) or e-mail.
    pub fn login(&self, name: &str, password: &str) -> Option<&Account> {
        let lower = name.to_lowercase();
        self.users.iter().find(|u| {
            (u.lower == lower || u.email.eq_ignore_ascii_case(name))
                && u.password.as_deref() == Some(password)
        })
    }

    /// The token with this value and its user.
    pub fn token(&self, value: &str) -> Option<(&Token, &Account)> {
        let t = self.tokens.get(value)?;
        Some((t, self.user(&t.user)?))
    }

    /// The organisations a user belongs to, in configuration order.
    pub fn orgs_of<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a Org> + 'a {
        self.orgs
            .iter()
            .filter(move |o| o.members.contains_key(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_write_implies_read() {
        let s = Scopes::parse(&["write:package".into()]).unwrap();
        assert!(s.allows(Category::Package, false));
        assert!(s.allows(Category::Package, true));
        assert!(!s.allows(Category::User, false));
        let r = Scopes::parse(&["read:package".into()]).unwrap();
        assert!(!r.allows(Category::Package, true));
        assert!(Scopes::parse(&["bogus".into()]).is_err());
    }

    #[test]
    fn config_parses() {
        let cfg: FileConfig = toml::from_str(
            r#"
            [[users]]
            name = "Alice"
            password = "pw"
            [[users.tokens]]
            value = "t1"
            scopes = ["read:package"]
            [[orgs]]
            name = "acme"
            visibility = "private"
            members = [{ user = "alice", role = "write" }]
            "#,
        )
        .unwrap();
        let dir = Directory::from_config(cfg).unwrap();
        assert!(matches!(dir.owner("ALICE"), Some(Owner::User(_))));
        assert!(matches!(dir.owner("Acme"), Some(Owner::Org(_))));
        assert_eq!(dir.token("t1").unwrap().1.name, "Alice");
        assert!(dir.login("alice", "pw").is_some());
        assert!(dir.login("alice", "no").is_none());
    }
}
