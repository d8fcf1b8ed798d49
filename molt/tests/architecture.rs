//! The dependency rules of ARCHITECTURE.md, checked against the workspace
//! as Cargo resolves it (`cargo metadata`), so they hold rather than only
//! being written down. A broken rule fails with the path that breaks it
//! (`molt-dataplane -> molt-controlplane -> sqlx`).
//!
//! "Depends on" means what a crate needs to be built: its normal and build
//! dependencies, transitively, with the features the workspace unifies.
//! Dev-dependencies (what a crate's own tests use) are not followed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The crate of test doubles: only the `molt` binary may link it.
const FAKES: &str = "molt-fakes";
const CONFIG: &str = "molt-config";
const DATAPLANE: &str = "molt-dataplane";
const CONTROLPLANE: &str = "molt-controlplane";

/// Crates that are a database client, a Stripe client, or an async
/// runtime or network stack. A name ending in `*` matches the crate and
/// its family (`sqlx*`: `sqlx`, `sqlx-core`, ...); others match exactly
/// (`rustls`, but not `rustls-pki-types`, which only holds types).
const DATABASE: &[&str] = &["sqlx*"];
const STRIPE: &[&str] = &["async-stripe*"];
const RUNTIME_OR_NETWORK: &[&str] = &[
    "tokio*",
    "async-std",
    "smol",
    "mio",
    "hyper*",
    "h2",
    "reqwest",
    "rustls",
    "pingora*",
    "sqlx*",
    "redis",
];

/// The workspace's resolved dependency graph.
struct Graph {
    /// Package id to package name.
    names: HashMap<String, String>,
    /// Package id to the ids it needs to be built (normal and build edges).
    edges: HashMap<String, Vec<String>>,
    /// Workspace members by name: (id, whether it has a library target).
    members: BTreeMap<String, (String, bool)>,
}

impl Graph {
    fn load() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(&root)
            .output()
            .expect("running cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
        let text = |v: &Value| v.as_str().expect("a string").to_owned();
        let packages = meta["packages"].as_array().expect("packages");
        let names: HashMap<String, String> = packages
            .iter()
            .map(|p| (text(&p["id"]), text(&p["name"])))
            .collect();
        let members = meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(|id| {
                let id = text(id);
                let package = packages.iter().find(|p| p["id"] == id.as_str()).unwrap();
                let lib = package["targets"].as_array().unwrap().iter().any(|t| {
                    t["kind"].as_array().unwrap().iter().any(|k| {
                        matches!(k.as_str(), Some("lib" | "rlib" | "dylib" | "proc-macro"))
                    })
                });
                (names[&id].clone(), (id, lib))
            })
            .collect();
        let edges = meta["resolve"]["nodes"]
            .as_array()
            .expect("resolve.nodes")
            .iter()
            .map(|node| {
                let built_with = node["deps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|dep| {
                        dep["dep_kinds"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|k| k["kind"].is_null() || k["kind"] == "build")
                    })
                    .map(|dep| text(&dep["pkg"]))
                    .collect();
                (text(&node["id"]), built_with)
            })
            .collect();
        Self {
            names,
            edges,
            members,
        }
    }

    fn id(&self, member: &str) -> &str {
        let (id, _) = self
            .members
            .get(member)
            .unwrap_or_else(|| panic!("{member} is not a workspace member"));
        id
    }

    /// The shortest path from `from` to a crate `forbidden` matches, as
    /// crate names joined by ` -> `.
    fn path_to(&self, from: &str, forbidden: impl Fn(&str) -> bool) -> Option<String> {
        let start = self.id(from).to_owned();
        let mut parent: HashMap<String, String> = HashMap::new();
        let mut queue = VecDeque::from([start.clone()]);
        while let Some(id) = queue.pop_front() {
            if id != start && forbidden(&self.names[&id]) {
                let mut path = vec![self.names[&id].clone()];
                let mut at = &id;
                while let Some(p) = parent.get(at) {
                    path.push(self.names[p].clone());
                    at = p;
                }
                path.reverse();
                return Some(path.join(" -> "));
            }
            for next in self.edges.get(&id).into_iter().flatten() {
                if *next != start && !parent.contains_key(next) {
                    parent.insert(next.clone(), id.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        None
    }

    /// Workspace members other than `owner` that list a crate `forbidden`
    /// matches among their own (direct) normal or build dependencies.
    fn direct_users(&self, owner: &str, forbidden: impl Fn(&str) -> bool) -> Vec<String> {
        let mut found = Vec::new();
        for (name, (id, _)) in &self.members {
            for dep in self.edges.get(id).into_iter().flatten() {
                if name != owner && forbidden(&self.names[dep]) {
                    found.push(format!("{name} -> {}", self.names[dep]));
                }
            }
        }
        found
    }
}

fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(Graph::load)
}

/// Whether `name` matches one of `patterns` (see [`DATABASE`]).
fn matches(name: &str, patterns: &[&str]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(family) => {
            name == family
                || name
                    .strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with('-'))
        }
        None => name == *p,
    })
}

/// Fails with every broken rule at once, each with its path and the
/// ARCHITECTURE.md rule it breaks.
fn assert_none(broken: Vec<String>, rule: &str) {
    assert!(
        broken.is_empty(),
        "{rule}\nbroken by:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn no_library_crate_depends_on_the_fakes() {
    let g = graph();
    let broken = g
        .members
        .iter()
        .filter(|(name, (_, lib))| *lib && name.as_str() != FAKES)
        .filter_map(|(name, _)| g.path_to(name, |n| n == FAKES))
        .collect();
    assert_none(
        broken,
        "no library crate depends on molt-fakes (test doubles stay out of the product; \
         only the molt binary and dev-dependencies may use them)",
    );
}

#[test]
fn the_data_plane_has_no_database_stripe_or_fly_client() {
    let g = graph();
    let broken = [
        g.path_to(DATAPLANE, |n| matches(n, DATABASE)),
        g.path_to(DATAPLANE, |n| matches(n, STRIPE)),
        // The Fly client is the control plane's (`fleet::fly`).
        g.path_to(DATAPLANE, |n| n == CONTROLPLANE),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_none(
        broken,
        "Architecture invariant: the data plane never talks to the database, Stripe or Fly; \
         molt-dataplane has no dependency on sqlx, a Stripe or a Fly client",
    );
}

#[test]
fn the_contract_depends_on_no_runtime_or_network_crate() {
    let g = graph();
    let broken = g
        .path_to(CONFIG, |n| matches(n, RUNTIME_OR_NETWORK))
        .into_iter()
        .collect();
    assert_none(
        broken,
        "Architecture invariant: molt-config does no network I/O and depends on no runtime \
         (no tokio, hyper, rustls, pingora, sqlx, ...)",
    );
}

#[test]
fn the_planes_meet_only_over_http() {
    let g = graph();
    let broken = [
        g.path_to(DATAPLANE, |n| n == CONTROLPLANE),
        g.path_to(CONTROLPLANE, |n| n == DATAPLANE),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_none(
        broken,
        "Architecture invariant: the only channel between the planes is HTTP; \
         neither plane's crate links the other",
    );
}

#[test]
fn only_the_control_plane_reaches_the_database_and_stripe() {
    let g = graph();
    let mut broken = g.direct_users(CONTROLPLANE, |n| matches(n, DATABASE));
    broken.extend(g.direct_users(CONTROLPLANE, |n| matches(n, STRIPE)));
    assert_none(
        broken,
        "Architecture invariant: molt-controlplane is the only owner of the database, \
         and reaches Stripe only through its MeterSink; no other crate uses sqlx or \
         async-stripe directly",
    );
}

/// The rules above look for paths; this makes sure they would find one.
#[test]
fn the_checks_see_the_paths_that_do_exist() {
    let g = graph();
    assert_eq!(
        g.path_to("molt", |n| n == FAKES).as_deref(),
        Some("molt -> molt-fakes")
    );
    let to_sqlx = g.path_to(CONTROLPLANE, |n| matches(n, DATABASE));
    assert_eq!(to_sqlx.as_deref(), Some("molt-controlplane -> sqlx"));
    let to_tokio = g.path_to(DATAPLANE, |n| matches(n, RUNTIME_OR_NETWORK));
    assert!(to_tokio.is_some_and(|p| p.starts_with("molt-dataplane -> ")));
    assert!(g.members.get(FAKES).is_some_and(|(_, lib)| *lib));
    assert!(g.members.get("molt").is_some_and(|(_, lib)| !*lib));
    assert_eq!(
        g.direct_users("nobody", |n| matches(n, DATABASE)),
        ["molt-controlplane -> sqlx"]
    );
    assert!(matches("sqlx-core", DATABASE) && !matches("sqlxy", DATABASE));
    assert!(matches("rustls", RUNTIME_OR_NETWORK));
    assert!(!matches("rustls-pki-types", RUNTIME_OR_NETWORK));
}
