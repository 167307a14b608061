//! Which pool a `/servers` request names: the `pool` member of a JSON body
//! or the `?pool=NAME` query parameter, `default` when neither is given,
//! and always one of the running configuration's pools.
//!
//! Not here: what is done in that pool ([`super::routes`]).

use crate::config::{Config, DEFAULT_POOL};

/// The query of a request target (after `?`), empty when there is none.
fn query_of(target: &str) -> &str {
    target.split_once('?').map_or("", |(_, q)| q)
}

/// The `pool` query parameter of `target`, if given. Any other parameter,
/// or `pool` given twice, is refused: a misspelt `?pol=api` must not
/// silently act on the default pool.
pub(super) fn pool_query(target: &str) -> Result<Option<&str>, String> {
    let mut pool = None;
    for pair in query_of(target).split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("pool", v)) if pool.is_none() => pool = Some(v),
            Some(("pool", _)) => return Err("the `pool` parameter is given twice".into()),
            _ => {
                return Err(format!(
                    "unknown query parameter `{pair}` (only `pool=NAME` is taken)"
                ));
            }
        }
    }
    Ok(pool)
}

/// The pool named by a body member and a query parameter (either, both when
/// they agree, `default` when neither), checked against `config`.
pub(super) fn resolve(
    config: &Config,
    member: Option<&str>,
    query: Option<&str>,
) -> Result<String, String> {
    let name = match (member, query) {
        (Some(m), Some(q)) if m != q => {
            return Err(format!(
                "the body names pool `{m}` and the query names pool `{q}`"
            ));
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => DEFAULT_POOL,
    };
    if config.pool_named(name).is_some() {
        return Ok(name.to_string());
    }
    let known: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    Err(format!(
        "unknown pool `{name}` (configured pools: {})",
        known.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::{pool_query, resolve};
    use std::path::Path;

    fn config() -> crate::config::Config {
        crate::config::parse(
            Path::new("t.toml"),
            "servers = ['127.0.0.1:1']\n[pools.api]\nservers = ['127.0.0.1:2']\n",
        )
        .expect("valid")
    }

    #[test]
    fn the_query_names_the_pool_and_nothing_else() {
        assert_eq!(pool_query("/servers/1.2.3.4:5"), Ok(None));
        assert_eq!(pool_query("/servers/1.2.3.4:5?"), Ok(None));
        assert_eq!(pool_query("/servers/1.2.3.4:5?pool=api"), Ok(Some("api")));
        assert_eq!(pool_query("/servers?pool="), Ok(Some("")));
        assert!(
            pool_query("/servers?pol=api")
                .unwrap_err()
                .contains("pol=api")
        );
        assert!(
            pool_query("/servers?pool=a&pool=b")
                .unwrap_err()
                .contains("twice")
        );
    }

    #[test]
    fn the_pool_must_be_configured() {
        let c = config();
        assert_eq!(resolve(&c, None, None).as_deref(), Ok("default"));
        assert_eq!(resolve(&c, Some("api"), None).as_deref(), Ok("api"));
        assert_eq!(resolve(&c, None, Some("api")).as_deref(), Ok("api"));
        assert_eq!(resolve(&c, Some("api"), Some("api")).as_deref(), Ok("api"));
        let e = resolve(&c, Some("web"), None).unwrap_err();
        assert_eq!(e, "unknown pool `web` (configured pools: default, api)");
        assert!(resolve(&c, Some("api"), Some("default")).is_err());
        assert!(resolve(&c, None, Some("")).is_err());
    }
}
