//! Who may log in, and what each user may do in each virtual host (issue 15), as
//! RabbitMQ's internal authentication and authorisation backend has it.
//!
//! [`Access`] holds users (with RabbitMQ's password hashes and tags), the virtual hosts'
//! own settings, and per user and vhost the permissions and topic permissions. It is a
//! plain registry: every change returns the [`Change`] to store, which the caller
//! writes through the definitions store after releasing its lock, and it never touches
//! the network or the disk.

pub mod limits;
pub mod password;
pub mod permissions;
pub mod rabbit_json;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::store::definitions::{
    Change, Definitions, PermissionDef, TopicPermissionDef, UserDef, VhostDef,
};
use password::{Algorithm, PasswordHash};
use permissions::{Pattern, PatternError, Permissions, TopicPermission};

/// A user that may log in.
#[derive(Debug, Clone)]
pub struct User {
    def: UserDef,
    /// `None`: no password login (an empty `password_hash`).
    hash: Option<PasswordHash>,
    /// Tells this user from one of the same name made after it was deleted (see
    /// [`Access::put_user`]).
    serial: u64,
}

impl User {
    /// Which user of its name it is: kept while it is changed, new when a deleted
    /// user's name is made again, so that the first one's connections can tell.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// It as definitions hold it.
    pub fn def(&self) -> &UserDef {
        &self.def
    }

    /// Its tags.
    pub fn tags(&self) -> &[String] {
        &self.def.tags
    }

    /// Whether it has tag `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.def.tags.iter().any(|t| t == tag)
    }

    /// Its limit `name` (`max-connections`, `max-channels`), if it has a non-negative one.
    pub fn limit(&self, name: &str) -> Option<u64> {
        self.def
            .limits
            .get(name)
            .and_then(|&v| u64::try_from(v).ok())
    }
}

/// Why a login failed, for the log (the client is only told that it was refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// No such user.
    #[error("user does not exist")]
    NoSuchUser,
    /// The password does not match, or the user has none.
    #[error("invalid credentials")]
    BadPassword,
    /// A blank password, which never logs in.
    #[error("blank password, which is prohibited")]
    BlankPassword,
}

/// Why a user may not use a vhost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhostRefusal {
    /// The vhost does not exist.
    NoSuchVhost,
    /// The user has no permissions in it.
    NotPermitted,
}

/// A change that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A permission pattern is not a regular expression.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// A stored password hash cannot be read.
    #[error("user '{user}': {source}")]
    Hash {
        /// The user.
        user: String,
        /// Why.
        source: password::HashError,
    },
    /// No such user.
    #[error("no such user '{0}'")]
    NoSuchUser(String),
    /// No such vhost.
    #[error("no such vhost '{0}'")]
    NoSuchVhost(String),
}

/// Vhosts, users and permissions as definitions: what is imported and exported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessDefinitions {
    /// Virtual hosts.
    pub vhosts: Vec<VhostDef>,
    /// Users.
    pub users: Vec<UserDef>,
    /// Permissions.
    pub permissions: Vec<PermissionDef>,
    /// Topic permissions.
    pub topic_permissions: Vec<TopicPermissionDef>,
}

/// Users, vhosts' settings and permissions.
#[derive(Debug, Clone, Default)]
pub struct Access {
    users: HashMap<String, User>,
    vhosts: BTreeMap<String, VhostDef>,
    /// By (user, vhost).
    permissions: HashMap<(String, String), (PermissionDef, Arc<Permissions>)>,
    /// By (user, vhost), one per exchange.
    topic: HashMap<(String, String), Vec<TopicPermission>>,
    /// The serial of the last user made.
    last_serial: u64,
}

impl Access {
    /// The registry the stored definitions describe. Entries that cannot be used (a
    /// pattern that does not compile, an unreadable hash) are left out, each with a
    /// line in the returned warnings: the broker starts with the rest.
    pub fn from_definitions(defs: &Definitions) -> (Self, Vec<String>) {
        let mut access = Self::default();
        let mut warnings = Vec::new();
        for vhost in &defs.vhosts {
            access.vhosts.insert(vhost.name.clone(), vhost.clone());
        }
        for user in &defs.users {
            if let Err(e) = access.put_user(user.clone()) {
                warnings.push(e.to_string());
            }
        }
        for p in &defs.permissions {
            if let Err(e) = access.set_permissions(p.clone()) {
                warnings.push(format!("permissions of '{}' in '{}': {e}", p.user, p.vhost));
            }
        }
        for t in &defs.topic_permissions {
            if let Err(e) = access.set_topic_permissions(t.clone()) {
                warnings.push(format!(
                    "topic permissions of '{}' in '{}': {e}",
                    t.user, t.vhost
                ));
            }
        }
        (access, warnings)
    }

    /// A fresh user `name` with password `password` (SHA-256, RabbitMQ's default) and
    /// `tags`, as `rabbitmqctl add_user` makes one.
    pub fn new_user(name: &str, password: &str, tags: Vec<String>) -> UserDef {
        let hash = PasswordHash::new(Algorithm::default(), password);
        UserDef {
            name: name.to_owned(),
            password_hash: hash.to_base64(),
            hashing_algorithm: hash.algorithm().name().to_owned(),
            tags,
            limits: BTreeMap::new(),
        }
    }

    /// Checks a login.
    ///
    /// # Errors
    /// No such user, or not its password.
    pub fn authenticate(&self, name: &str, password: &str) -> Result<&User, LoginError> {
        let user = self.users.get(name).ok_or(LoginError::NoSuchUser)?;
        if password.is_empty() {
            // RabbitMQ's internal backend refuses blank passwords whatever the hash.
            return Err(LoginError::BlankPassword);
        }
        match &user.hash {
            Some(hash) if hash.matches(password) => Ok(user),
            _ => Err(LoginError::BadPassword),
        }
    }

    /// The user `name`, if it exists.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The settings of vhost `name`, if it exists.
    pub fn vhost(&self, name: &str) -> Option<&VhostDef> {
        self.vhosts.get(name)
    }

    /// The vhosts' names.
    pub fn vhost_names(&self) -> impl Iterator<Item = &str> {
        self.vhosts.keys().map(String::as_str)
    }

    /// `user`'s permissions in `vhost`.
    ///
    /// # Errors
    /// The vhost does not exist, or the user has no permissions in it.
    pub fn vhost_access(&self, user: &str, vhost: &str) -> Result<Arc<Permissions>, VhostRefusal> {
        if !self.vhosts.contains_key(vhost) {
            return Err(VhostRefusal::NoSuchVhost);
        }
        self.permissions
            .get(&(user.to_owned(), vhost.to_owned()))
            .map(|(_, p)| p.clone())
            .ok_or(VhostRefusal::NotPermitted)
    }

    /// `user`'s topic permission on `exchange` in `vhost`, if it has one.
    pub fn topic_permission(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
    ) -> Option<&TopicPermission> {
        self.topic
            .get(&(user.to_owned(), vhost.to_owned()))?
            .iter()
            .find(|t| t.exchange == exchange)
    }

    /// Whether `user` has any topic permission in `vhost`.
    pub fn has_topic_permissions(&self, user: &str, vhost: &str) -> bool {
        self.topic
            .get(&(user.to_owned(), vhost.to_owned()))
            .is_some_and(|t| !t.is_empty())
    }

    /// Creates or replaces a vhost's settings.
    pub fn put_vhost(&mut self, def: VhostDef) -> Change {
        self.vhosts.insert(def.name.clone(), def.clone());
        Change::PutVhost(def)
    }

    /// Deletes a vhost's settings and every permission in it.
    ///
    /// # Errors
    /// No such vhost.
    pub fn delete_vhost(&mut self, name: &str) -> Result<Change, AccessError> {
        self.vhosts
            .remove(name)
            .ok_or_else(|| AccessError::NoSuchVhost(name.to_owned()))?;
        self.permissions.retain(|(_, v), _| v != name);
        self.topic.retain(|(_, v), _| v != name);
        Ok(Change::DeleteVhost {
            name: name.to_owned(),
        })
    }

    /// Creates or replaces a user.
    ///
    /// # Errors
    /// Its password hash cannot be read.
    pub fn put_user(&mut self, def: UserDef) -> Result<Change, AccessError> {
        let hash = if def.password_hash.is_empty() {
            None
        } else {
            let algorithm = if def.hashing_algorithm.is_empty() {
                Algorithm::default().name()
            } else {
                &def.hashing_algorithm
            };
            Some(
                PasswordHash::from_base64(algorithm, &def.password_hash).map_err(|source| {
                    AccessError::Hash {
                        user: def.name.clone(),
                        source,
                    }
                })?,
            )
        };
        let serial = match self.users.get(&def.name) {
            Some(changed) => changed.serial,
            None => {
                self.last_serial += 1;
                self.last_serial
            }
        };
        self.users.insert(
            def.name.clone(),
            User {
                def: def.clone(),
                hash,
                serial,
            },
        );
        Ok(Change::PutUser(def))
    }

    /// Deletes a user and its permissions.
    ///
    /// # Errors
    /// No such user.
    pub fn delete_user(&mut self, name: &str) -> Result<Change, AccessError> {
        self.users
            .remove(name)
            .ok_or_else(|| AccessError::NoSuchUser(name.to_owned()))?;
        self.permissions.retain(|(u, _), _| u != name);
        self.topic.retain(|(u, _), _| u != name);
        Ok(Change::DeleteUser {
            name: name.to_owned(),
        })
    }

    /// Sets a user's permissions in a vhost.
    ///
    /// # Errors
    /// A pattern is not a regular expression.
    pub fn set_permissions(&mut self, def: PermissionDef) -> Result<Change, AccessError> {
        self.check_user_and_vhost(&def.user, &def.vhost)?;
        let compiled = Permissions {
            configure: Pattern::new(&def.configure)?,
            write: Pattern::new(&def.write)?,
            read: Pattern::new(&def.read)?,
        };
        self.permissions.insert(
            (def.user.clone(), def.vhost.clone()),
            (def.clone(), Arc::new(compiled)),
        );
        Ok(Change::SetPermissions(def))
    }

    /// Clears a user's permissions in a vhost.
    ///
    /// # Errors
    /// No such user or vhost.
    pub fn clear_permissions(&mut self, user: &str, vhost: &str) -> Result<Change, AccessError> {
        self.check_user_and_vhost(user, vhost)?;
        self.permissions
            .remove(&(user.to_owned(), vhost.to_owned()));
        Ok(Change::ClearPermissions {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
        })
    }

    /// Sets a user's topic permissions on an exchange.
    ///
    /// # Errors
    /// A pattern (variables left in) is not a regular expression.
    pub fn set_topic_permissions(
        &mut self,
        def: TopicPermissionDef,
    ) -> Result<Change, AccessError> {
        self.check_user_and_vhost(&def.user, &def.vhost)?;
        let permission =
            TopicPermission::new(&def.exchange, &def.write, &def.read, &def.user, &def.vhost)?;
        let list = self
            .topic
            .entry((def.user.clone(), def.vhost.clone()))
            .or_default();
        list.retain(|t| t.exchange != def.exchange);
        list.push(permission);
        Ok(Change::SetTopicPermissions(def))
    }

    fn check_user_and_vhost(&self, user: &str, vhost: &str) -> Result<(), AccessError> {
        if !self.users.contains_key(user) {
            return Err(AccessError::NoSuchUser(user.to_owned()));
        }
        if !self.vhosts.contains_key(vhost) {
            return Err(AccessError::NoSuchVhost(vhost.to_owned()));
        }
        Ok(())
    }

    /// Clears a user's topic permissions in a vhost: on `exchange`, or on all.
    ///
    /// # Errors
    /// No such user or vhost.
    pub fn clear_topic_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<Change, AccessError> {
        self.check_user_and_vhost(user, vhost)?;
        let key = (user.to_owned(), vhost.to_owned());
        if let Some(list) = self.topic.get_mut(&key) {
            list.retain(|t| exchange.is_some_and(|e| e != t.exchange));
            if list.is_empty() {
                self.topic.remove(&key);
            }
        }
        Ok(Change::ClearTopicPermissions {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            exchange: exchange.map(str::to_owned),
        })
    }

    /// Applies imported definitions: vhosts created or changed (one the file gives no
    /// limits keeps those it has), users created or replaced, then permissions and
    /// topic permissions. Returns the changes to store.
    ///
    /// # Errors
    /// An unusable entry; what came before it is applied (callers that must change
    /// nothing on failure apply to a copy).
    pub fn apply(&mut self, defs: AccessDefinitions) -> Result<Vec<Change>, AccessError> {
        let mut changes = Vec::new();
        for mut vhost in defs.vhosts {
            if vhost.limits.is_empty()
                && let Some(existing) = self.vhosts.get(&vhost.name)
            {
                vhost.limits = existing.limits.clone();
            }
            changes.push(self.put_vhost(vhost));
        }
        for user in defs.users {
            changes.push(self.put_user(user)?);
        }
        for p in defs.permissions {
            changes.push(self.set_permissions(p)?);
        }
        for t in defs.topic_permissions {
            changes.push(self.set_topic_permissions(t)?);
        }
        Ok(changes)
    }

    /// Every vhost, user, permission and topic permission, as definitions.
    pub fn export(&self) -> AccessDefinitions {
        let vhosts = self.vhosts.values().cloned().collect();
        let mut users: Vec<UserDef> = self.users.values().map(|u| u.def.clone()).collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        let mut permissions: Vec<PermissionDef> =
            self.permissions.values().map(|(d, _)| d.clone()).collect();
        permissions.sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
        let mut topic: Vec<TopicPermissionDef> = self
            .topic
            .iter()
            .flat_map(|((user, vhost), list)| {
                list.iter().map(move |t| TopicPermissionDef {
                    user: user.clone(),
                    vhost: vhost.clone(),
                    exchange: t.exchange.clone(),
                    write: t.write.clone(),
                    read: t.read.clone(),
                })
            })
            .collect();
        topic.sort_by(|a, b| {
            (&a.user, &a.vhost, &a.exchange).cmp(&(&b.user, &b.vhost, &b.exchange))
        });
        AccessDefinitions {
            vhosts,
            users,
            permissions,
            topic_permissions: topic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(user: &str, vhost: &str) -> PermissionDef {
        PermissionDef {
            user: user.into(),
            vhost: vhost.into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }

    #[test]
    fn a_user_made_again_under_its_name_is_another_user() {
        let mut access = Access::default();
        let serial = |access: &Access| access.user("bob").map(User::serial);
        access
            .put_user(Access::new_user("bob", "pw", vec![]))
            .expect("made");
        let first = serial(&access);
        access
            .put_user(Access::new_user(
                "bob",
                "changed",
                vec!["monitoring".into()],
            ))
            .expect("changed");
        assert_eq!(serial(&access), first, "a change keeps the user");
        access.delete_user("bob").expect("deleted");
        access
            .put_user(Access::new_user("bob", "pw", vec![]))
            .expect("made again");
        assert!(serial(&access).is_some());
        assert_ne!(serial(&access), first, "made again, it is another user");
    }

    #[test]
    fn a_user_logs_in_with_its_password_and_uses_only_vhosts_it_has_permissions_in() {
        let mut access = Access::default();
        access.put_vhost(VhostDef {
            name: "/".into(),
            description: String::new(),
            tags: vec![],
            limits: BTreeMap::new(),
        });
        access
            .put_user(Access::new_user("alice", "pw", vec!["monitoring".into()]))
            .expect("user");
        access.set_permissions(full("alice", "/")).expect("perms");
        assert_eq!(
            access.authenticate("alice", "pw").map(User::name),
            Ok("alice")
        );
        assert_eq!(
            access.authenticate("alice", "PW").map(User::name),
            Err(LoginError::BadPassword)
        );
        assert_eq!(
            access.authenticate("bob", "pw").map(User::name),
            Err(LoginError::NoSuchUser)
        );
        assert!(access.vhost_access("alice", "/").is_ok());
        assert_eq!(
            access.vhost_access("alice", "other").err(),
            Some(VhostRefusal::NoSuchVhost)
        );
        access.clear_permissions("alice", "/").expect("cleared");
        assert_eq!(
            access.vhost_access("alice", "/").err(),
            Some(VhostRefusal::NotPermitted)
        );
    }

    #[test]
    fn blank_passwords_never_log_in_and_permissions_need_their_user_and_vhost() {
        let mut access = Access::default();
        access.put_vhost(VhostDef {
            name: "/".into(),
            description: String::new(),
            tags: vec![],
            limits: BTreeMap::new(),
        });
        access
            .put_user(Access::new_user("blank", "", vec![]))
            .expect("user");
        assert_eq!(
            access.authenticate("blank", "").map(User::name),
            Err(LoginError::BlankPassword)
        );
        assert!(matches!(
            access.set_permissions(full("nobody", "/")),
            Err(AccessError::NoSuchUser(_))
        ));
        assert!(matches!(
            access.set_permissions(full("blank", "nowhere")),
            Err(AccessError::NoSuchVhost(_))
        ));
    }

    #[test]
    fn what_is_exported_comes_back_the_same() {
        let mut access = Access::default();
        access.put_vhost(VhostDef {
            name: "v".into(),
            description: "d".into(),
            tags: vec!["t".into()],
            limits: BTreeMap::from([("max-queues".into(), 10)]),
        });
        access
            .put_user(Access::new_user("u", "p", vec![]))
            .expect("user");
        access.set_permissions(full("u", "v")).expect("perms");
        access
            .set_topic_permissions(TopicPermissionDef {
                user: "u".into(),
                vhost: "v".into(),
                exchange: "amq.topic".into(),
                write: "^a".into(),
                read: ".*".into(),
            })
            .expect("topic");
        let AccessDefinitions {
            vhosts,
            users,
            permissions,
            topic_permissions,
        } = access.export();
        let defs = Definitions {
            vhosts,
            users,
            permissions,
            topic_permissions,
            ..Definitions::default()
        };
        let (again, warnings) = Access::from_definitions(&defs);
        assert!(warnings.is_empty());
        assert_eq!(again.export(), access.export());
        assert!(again.authenticate("u", "p").is_ok());
    }

    #[test]
    fn unusable_entries_are_left_out_with_a_warning() {
        let mut bad_user = Access::new_user("x", "p", vec![]);
        bad_user.password_hash = "!!".into();
        let mut bad_perm = full("u", "/");
        bad_perm.read = "(".into();
        let defs = Definitions {
            users: vec![bad_user],
            permissions: vec![bad_perm],
            ..Definitions::default()
        };
        let (access, warnings) = Access::from_definitions(&defs);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(access.user("x").is_none());
    }
}
