//! Where settings come from, applied in this order so that later ones win: the defaults,
//! the TOML file, `CHAT_*` environment variables, then command-line flags.
//!
//! The file is walked table by table, to any depth, carrying the dotted path so far: a
//! table the registry knows as a section is entered, anything else must be a key. So
//! `[a.b]` with `c = 1`, `a.b.c = 1` and `a = { b = { c = 1 } }` set the same key, and every
//! complaint names the full dotted key and the file. An array of tables (`[[webhooks]]`)
//! is one more kind of registry entry, walked element by element: each element starts at
//! its defaults and its keys are named `webhooks[1].url` in complaints. The environment
//! has no lists, so an array's variables (`CHAT_WEBHOOK_URL`, …) set a single element:
//! they create it when the file has none, and override it when the file has one.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::registry::{env_var, Array, Entry, Raw, Registry};
use super::{Config, ConfigError};

/// A setting given as a command-line flag.
#[derive(Debug)]
pub struct Flag {
    /// The dotted key it sets; must be in the registry.
    pub key: &'static str,
    /// The flag as the user typed it (`--bind`), named in errors.
    pub name: &'static str,
    /// The text given.
    pub value: String,
}

/// Layers the defaults, the file (`file`, else `CHAT_CONFIG`), the environment and `flags`.
pub(super) fn resolve(
    registry: &Registry,
    file: Option<PathBuf>,
    flags: &[Flag],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    let file = file.or_else(|| non_empty(env("CHAT_CONFIG")).map(PathBuf::from));
    if let Some(path) = file {
        read_file(&mut cfg, registry, &path)?;
    }
    apply_env(&mut cfg, registry, env)?;
    apply_flags(&mut cfg, registry, flags)?;
    Ok(cfg)
}

fn read_file(cfg: &mut Config, registry: &Registry, path: &Path) -> Result<(), ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {origin}: {e}")))?;
    apply_file(cfg, registry, &text, &origin)
}

/// Applies a TOML document; `origin` names the file in errors.
pub(super) fn apply_file(
    cfg: &mut Config,
    registry: &Registry,
    text: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        ConfigError(format!("{origin} is not valid TOML{at}: {message}"))
    })?;
    walk(cfg, registry, &table, "", origin)
}

/// Applies every entry of `table`, whose dotted path is `prefix` (empty at the top).
fn walk(
    cfg: &mut Config,
    registry: &Registry,
    table: &Table,
    prefix: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    for (name, value) in table {
        let name = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match registry.lookup(&name) {
            Entry::Key(key) => key.apply(cfg, Raw::Toml(value), &format!("in {origin}"))?,
            Entry::Section => {
                let Value::Table(section) = value else {
                    return Err(ConfigError(format!(
                        "{name}: expected a table, got {} (in {origin})",
                        Raw::Toml(value).show()
                    )));
                };
                walk(cfg, registry, section, &name, origin)?;
            }
            Entry::Array(array) => walk_array(cfg, array, value, origin)?,
            Entry::Replaced(r) => {
                return Err(ConfigError(format!(
                    "`{name}` in {origin} was replaced by `{}` ({})",
                    r.new, r.why
                )))
            }
            Entry::Unknown => {
                return Err(ConfigError(format!("unknown key `{name}` in {origin}")));
            }
        }
    }
    Ok(())
}

/// Appends one element per table of `value`, an array of tables.
fn walk_array(
    cfg: &mut Config,
    array: &Array,
    value: &Value,
    origin: &str,
) -> Result<(), ConfigError> {
    let name = array.name;
    let Value::Array(items) = value else {
        return Err(ConfigError(format!(
            "{name}: expected an array of tables ([[{name}]]), got {} (in {origin})",
            Raw::Toml(value).show()
        )));
    };
    for item in items {
        let index = (array.len)(cfg);
        let Value::Table(table) = item else {
            return Err(ConfigError(format!(
                "{name}[{index}]: expected a table, got {} (in {origin})",
                Raw::Toml(item).show()
            )));
        };
        (array.push)(cfg);
        for (key_name, value) in table {
            let Some(key) = array.keys.iter().find(|k| k.name == key_name) else {
                return Err(ConfigError(format!(
                    "unknown key `{name}[{index}].{key_name}` in {origin}"
                )));
            };
            array.apply(key, cfg, index, Raw::Toml(value), &format!("in {origin}"))?;
        }
    }
    Ok(())
}

/// Applies every key's `CHAT_*` variable; a replaced key's variable is an error.
fn apply_env(
    cfg: &mut Config,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for r in registry.replaced {
        let var = env_var(r.old);
        if non_empty(env(&var)).is_some() {
            return Err(ConfigError(format!(
                "{var} was replaced by {} ({})",
                env_var(r.new),
                r.why
            )));
        }
    }
    for key in registry.keys {
        let var = env_var(key.name);
        if let Some(value) = non_empty(env(&var)) {
            key.apply(cfg, Raw::Text(&value), &format!("from {var}"))?;
        }
    }
    for array in registry.arrays {
        let set: Vec<_> = array
            .keys
            .iter()
            .filter_map(|key| {
                let var = array.env_var(key);
                non_empty(env(&var)).map(|value| (key, var, value))
            })
            .collect();
        let Some((_, first_var, _)) = set.first() else {
            continue;
        };
        match (array.len)(cfg) {
            0 => (array.push)(cfg),
            1 => {}
            n => {
                return Err(ConfigError(format!(
                    "{first_var} sets a single entry of {}, but the file has {n}; \
                     configure them all in the file",
                    array.name
                )))
            }
        }
        for (key, var, value) in &set {
            array.apply(key, cfg, 0, Raw::Text(value), &format!("from {var}"))?;
        }
    }
    Ok(())
}

fn apply_flags(cfg: &mut Config, registry: &Registry, flags: &[Flag]) -> Result<(), ConfigError> {
    for flag in flags {
        let key = registry
            .key(flag.key)
            .expect("a flag names a registered key");
        key.apply(cfg, Raw::Text(&flag.value), &format!("from {}", flag.name))?;
    }
    Ok(())
}

/// Empty environment variables count as unset, as is usual for container setups.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::registry::{key, positive_int, Key, Replaced, REGISTRY};
    use super::super::testing::{env, error, file, load, path};
    use super::super::WebhookEvent;
    use super::*;

    #[test]
    fn unknown_key_names_key_and_file() {
        let f = file("[limits]\nmax_frame_byte = 1\n");
        let e = error(load(Some(&f), &[]));
        assert_eq!(
            e,
            format!(
                "config error: unknown key `limits.max_frame_byte` in {}",
                path(&f)
            )
        );
        let f = file("[limit]\nmax_frame_bytes = 1\n");
        let e = error(load(Some(&f), &[]));
        assert!(e.contains("unknown key `limit`"), "{e}");
        let f = file("[limits.deeper]\nmax_frame_bytes = 1\n");
        let e = error(load(Some(&f), &[]));
        assert!(e.contains("unknown key `limits.deeper`"), "{e}");
    }

    #[test]
    fn bad_type_names_key() {
        let f = file("[limits]\nmax_frame_bytes = \"big\"\n");
        let e = error(load(Some(&f), &[]));
        assert!(
            e.starts_with("config error: limits.max_frame_bytes: expected a positive integer"),
            "{e}"
        );
        assert!(e.contains(path(&f)), "{e}");
        let f = file("limits = 3\n");
        assert!(error(load(Some(&f), &[])).contains("limits: expected a table"));
        let f = file("[cors]\nallowed_origins = \"x\"\n");
        assert!(error(load(Some(&f), &[])).contains("cors.allowed_origins: expected"));
    }

    #[test]
    fn bad_toml_names_file_and_position() {
        let f = file("bind = \"127.0.0.1:1\"\n[limits\n");
        let e = error(load(Some(&f), &[]));
        assert!(e.contains(path(&f)) && e.contains("not valid TOML"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_replaced_room_count_names_its_successor() {
        let f = file("[storage]\ncache_rooms = 4096\n");
        let e = error(load(Some(&f), &[]));
        assert_eq!(
            e,
            format!(
                "config error: `storage.cache_rooms` in {} was replaced by \
                 `memory.recent_cache_bytes` (a budget in bytes, not rooms)",
                path(&f)
            )
        );
        let e = error(load(None, &[("CHAT_STORAGE_CACHE_ROOMS", "4096")]));
        assert_eq!(
            e,
            "config error: CHAT_STORAGE_CACHE_ROOMS was replaced by \
             CHAT_MEMORY_RECENT_CACHE_BYTES (a budget in bytes, not rooms)"
        );
    }

    #[test]
    fn a_bad_flag_names_the_flag() {
        let flag = Flag {
            key: "bind",
            name: "--bind",
            value: "nowhere".to_owned(),
        };
        let e = error(super::super::load(None, &[flag], &env(&[])));
        assert!(
            e.starts_with("config error: bind: ") && e.ends_with("(from --bind)"),
            "{e}"
        );
    }

    /// Keys two and three tables deep, which the server's own settings do not have yet;
    /// their values land in existing fields so that the tests can see them.
    const NESTED: Registry = Registry {
        keys: &[
            key!("a.rate", positive_int, |c| c.limits.request_burst),
            key!("a.b.frame", positive_int, |c| c.limits.max_frame_bytes),
            key!("a.b.c.burst", positive_int, |c| c.limits.send_burst),
        ],
        arrays: &[],
        replaced: &[
            Replaced {
                old: "a.b.old",
                new: "a.b.frame",
                why: "renamed",
            },
            // Its whole section is gone; the pointer must still be shown.
            Replaced {
                old: "gone.old",
                new: "a.rate",
                why: "moved",
            },
        ],
    };

    /// Resolves `text` as the file against [`NESTED`], with `pairs` as the environment.
    fn nested(text: &str, pairs: &[(&str, &str)]) -> (Result<Config, ConfigError>, String) {
        let f = file(text);
        let result = resolve(&NESTED, Some(f.path().to_owned()), &[], &env(pairs));
        (result, path(&f).to_owned())
    }

    #[test]
    fn nested_tables_are_walked_to_any_depth() {
        for text in [
            "[a]\nrate = 7\n[a.b]\nframe = 5\n[a.b.c]\nburst = 6\n",
            "a.rate = 7\na.b.frame = 5\na.b.c.burst = 6\n",
            "a = { rate = 7, b = { frame = 5, c = { burst = 6 } } }\n",
        ] {
            let c = nested(text, &[]).0.unwrap();
            let l = &c.limits;
            assert_eq!(
                (l.request_burst, l.max_frame_bytes, l.send_burst),
                (7, 5, 6),
                "{text}"
            );
        }
    }

    #[test]
    fn a_nested_key_has_its_variable_and_flag() {
        let (c, _) = nested("[a.b.c]\nburst = 6\n", &[("CHAT_A_B_C_BURST", "9")]);
        assert_eq!(c.unwrap().limits.send_burst, 9);
        let flag = Flag {
            key: "a.b.c.burst",
            name: "--burst",
            value: "11".to_owned(),
        };
        let c = resolve(&NESTED, None, &[flag], &env(&[("CHAT_A_B_C_BURST", "9")]));
        assert_eq!(c.unwrap().limits.send_burst, 11);
    }

    #[test]
    fn nested_errors_name_the_full_dotted_key_and_the_file() {
        let cases = [
            ("[a.b]\nfram = 5\n", "unknown key `a.b.fram` in {p}"),
            (
                "[a.b.c]\nburst = 1\nx = 1\n",
                "unknown key `a.b.c.x` in {p}",
            ),
            ("[a.z]\nframe = 5\n", "unknown key `a.z` in {p}"),
            ("[a]\nb = 3\n", "a.b: expected a table, got 3 (in {p})"),
            ("a = \"x\"\n", "a: expected a table, got \"x\" (in {p})"),
            (
                "[a.b]\nc = [{ burst = 1 }]\n",
                "a.b.c: expected a table, got an array (in {p})",
            ),
            (
                "[a.b.c]\nburst = \"many\"\n",
                "a.b.c.burst: expected a positive integer, got \"many\" (in {p})",
            ),
            (
                "[a.b]\nold = 1\n",
                "`a.b.old` in {p} was replaced by `a.b.frame` (renamed)",
            ),
            (
                "[gone]\nold = 1\n",
                "`gone.old` in {p} was replaced by `a.rate` (moved)",
            ),
        ];
        for (text, expected) in cases {
            let (result, p) = nested(text, &[]);
            let e = error(result);
            assert_eq!(
                e,
                format!("config error: {}", expected.replace("{p}", &p)),
                "{text}"
            );
        }
    }

    #[test]
    fn a_section_may_be_written_as_dotted_keys_or_an_inline_table() {
        for text in [
            "limits.max_frame_bytes = 9000\n",
            "limits = { max_frame_bytes = 9000 }\n",
        ] {
            let mut c = Config::default();
            apply_file(&mut c, &REGISTRY, text, "t.toml").unwrap();
            assert_eq!(c.limits.max_frame_bytes, 9000, "{text}");
        }
    }

    /// Resolves `text` as the file against the server's registry, with `pairs` as the
    /// environment.
    fn real(text: &str, pairs: &[(&str, &str)]) -> (Result<Config, ConfigError>, String) {
        let f = file(text);
        let result = super::super::load(Some(f.path().to_owned()), &[], &env(pairs));
        (result, path(&f).to_owned())
    }

    #[test]
    fn an_array_of_tables_gives_one_element_each_at_its_defaults() {
        let text = "[[webhooks]]\nurl = \"https://a.example/hook\"\nsecret = \"s1\"\n\
                    events = [\"message.created\", \"message.seen\", \"user.erased\"]\n\
                    offline_only = false\n\
                    [[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"s2\"\n\
                    give_up_after_secs = 60\n";
        let c = real(text, &[]).0.unwrap();
        assert_eq!(c.webhooks.len(), 2);
        let (a, b) = (&c.webhooks[0], &c.webhooks[1]);
        assert_eq!(
            (a.url.as_str(), a.secret.as_str()),
            ("https://a.example/hook", "s1")
        );
        assert_eq!(
            a.events,
            [
                WebhookEvent::MessageCreated,
                WebhookEvent::MessageSeen,
                WebhookEvent::UserErased
            ]
        );
        assert!(!a.offline_only);
        assert_eq!(a.give_up_after_secs, 86_400);
        assert_eq!(b.events, [WebhookEvent::MessageCreated]);
        assert!(b.offline_only);
        assert_eq!(b.give_up_after_secs, 60);
        assert_eq!(b.timeout_secs, 10);
        // The inline spelling is the same array.
        let inline = "webhooks = [{ url = \"http://h.example\", secret = \"x\" }]\n";
        assert_eq!(
            real(inline, &[]).0.unwrap().webhooks[0].url,
            "http://h.example"
        );
    }

    #[test]
    fn array_errors_name_the_element_key_and_the_file() {
        let hook = "url = \"http://h.example\"\nsecret = \"s\"\n";
        let cases = [
            (
                format!("[[webhooks]]\n{hook}[[webhooks]]\n{hook}urll = 1\n"),
                "unknown key `webhooks[1].urll` in {p}".to_owned(),
            ),
            (
                "webhooks = 3\n".to_owned(),
                "webhooks: expected an array of tables ([[webhooks]]), got 3 (in {p})".to_owned(),
            ),
            (
                "webhooks = [1]\n".to_owned(),
                "webhooks[0]: expected a table, got 1 (in {p})".to_owned(),
            ),
            (
                "[webhooks]\nurl = \"http://h.example\"\n".to_owned(),
                "webhooks: expected an array of tables ([[webhooks]]), got a table (in {p})"
                    .to_owned(),
            ),
            (
                "[[webhooks]]\nurl = \"ftp://h.example/x\"\n".to_owned(),
                "webhooks[0].url: expected an http:// or https:// URL with a host, \
                 got \"ftp://h.example/x\" (in {p})"
                    .to_owned(),
            ),
            (
                "[[webhooks]]\nurl = \"/relative\"\n".to_owned(),
                "webhooks[0].url: expected an http:// or https:// URL with a host, \
                 got \"/relative\" (in {p})"
                    .to_owned(),
            ),
            (
                format!("[[webhooks]]\n{hook}events = [\"message.deleted\"]\n"),
                "webhooks[0].events: unknown event \"message.deleted\"; known: \
                 \"message.created\", \"message.seen\", \"user.erased\" (in {p})"
                    .to_owned(),
            ),
            (
                "[[webhooks]]\nurl = \"http://h.example\"\nsecret = \"\"\n".to_owned(),
                "webhooks[0].secret: expected a non-empty string (in {p})".to_owned(),
            ),
            (
                format!("[[webhooks]]\n{hook}offline_only = \"no\"\n"),
                "webhooks[0].offline_only: expected true or false, got \"no\" (in {p})".to_owned(),
            ),
            (
                "[[webhooks]]\nurl = \"http://h.example\"\n".to_owned(),
                "webhooks[0].secret is required (CHAT_WEBHOOK_SECRET for a single hook)".to_owned(),
            ),
            (
                format!("[[webhooks]]\n{hook}events = []\n"),
                "webhooks[0].events must name at least one event".to_owned(),
            ),
            (
                format!("[[webhooks]]\n{hook}[[webhooks]]\n{hook}"),
                "webhooks[1].url is the same as webhooks[0].url (http://h.example)".to_owned(),
            ),
        ];
        for (text, expected) in cases {
            let (result, p) = real(&text, &[]);
            let e = error(result);
            assert_eq!(
                e,
                format!("config error: {}", expected.replace("{p}", &p)),
                "{text}"
            );
        }
    }

    #[test]
    fn the_environment_configures_a_single_hook() {
        let c = load(
            None,
            &[
                ("CHAT_WEBHOOK_URL", "http://127.0.0.1:1/h"),
                ("CHAT_WEBHOOK_SECRET", "env-secret"),
                ("CHAT_WEBHOOK_EVENTS", "message.seen, message.created"),
                ("CHAT_WEBHOOK_OFFLINE_ONLY", "false"),
                ("CHAT_WEBHOOK_GIVE_UP_AFTER_SECS", "5"),
            ],
        )
        .unwrap();
        assert_eq!(c.webhooks.len(), 1);
        let h = &c.webhooks[0];
        assert_eq!(
            (h.url.as_str(), h.secret.as_str()),
            ("http://127.0.0.1:1/h", "env-secret")
        );
        assert_eq!(
            h.events,
            [WebhookEvent::MessageSeen, WebhookEvent::MessageCreated]
        );
        assert!(!h.offline_only);
        assert_eq!(h.give_up_after_secs, 5);

        // Over the file's one hook, the environment wins key by key.
        let text = "[[webhooks]]\nurl = \"http://file.example\"\nsecret = \"f\"\n";
        let c = real(text, &[("CHAT_WEBHOOK_SECRET", "e")]).0.unwrap();
        assert_eq!(
            (c.webhooks[0].url.as_str(), c.webhooks[0].secret.as_str()),
            ("http://file.example", "e")
        );

        let two = format!("{text}[[webhooks]]\nurl = \"http://two.example\"\nsecret = \"t\"\n");
        let e = error(real(&two, &[("CHAT_WEBHOOK_SECRET", "e")]).0);
        assert_eq!(
            e,
            "config error: CHAT_WEBHOOK_SECRET sets a single entry of webhooks, but the file \
             has 2; configure them all in the file"
        );
        let e = error(load(None, &[("CHAT_WEBHOOK_URL", "mailto:a@b.example")]));
        assert!(
            e.starts_with("config error: webhooks[0].url: expected an http")
                && e.ends_with("(from CHAT_WEBHOOK_URL)"),
            "{e}"
        );
        let e = error(load(None, &[("CHAT_WEBHOOK_URL", "https://h.example")]));
        assert!(e.contains("webhooks[0].secret is required"), "{e}");
        // No variable, no hook.
        assert!(load(None, &[]).unwrap().webhooks.is_empty());
    }
}
