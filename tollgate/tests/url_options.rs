//! URL options mean the same on every backend: one duration grammar, unknown or misspelt
//! keys rejected with an error naming them, a key given twice rejected, and no password
//! quoted back. Nothing here needs a server: providers connect on first use.

use tollgate::{AnyProvider, Error};

/// The message of the `InvalidArgument` that `url` must give.
fn rejected(url: &str) -> String {
    match AnyProvider::from_url(url) {
        Err(Error::InvalidArgument(message)) => message,
        Err(other) => panic!("{url}: expected an invalid argument, got {other}"),
        Ok(_) => panic!("{url}: accepted"),
    }
}

fn accepted(url: &str) {
    if let Err(error) = AnyProvider::from_url(url) {
        panic!("{url}: {error}");
    }
}

/// Every backend compiled in, with a base URL that takes `?options` and the duration option
/// it knows.
#[allow(unused_mut, clippy::vec_init_then_push)] // each push is behind its feature
fn backends() -> Vec<(&'static str, &'static str)> {
    let mut backends = Vec::new();
    #[cfg(feature = "postgres")]
    backends.push((
        "postgres://u:hunter2@127.0.0.1/db?sslmode=disable&",
        "keepalive",
    ));
    #[cfg(feature = "mysql")]
    backends.push(("mysql://u:hunter2@127.0.0.1/db?", "keepalive"));
    #[cfg(feature = "redis")]
    backends.push(("redis://u:hunter2@127.0.0.1:6379/?", "expiry"));
    backends
}

#[test]
fn misspelt_keys_are_named_with_the_nearest_known_one() {
    for (base, duration) in backends() {
        let misspelt = format!("{}{}", &duration[..duration.len() - 1], "x");
        let message = rejected(&format!("{base}{misspelt}=5s"));
        assert!(message.contains(&format!("{misspelt:?}")), "{message}");
        assert!(
            message.contains(&format!("did you mean {duration:?}")),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let message = rejected(&format!("{base}wholly_unknown=1"));
        assert!(message.contains("\"wholly_unknown\""), "{message}");
    }
    #[cfg(feature = "local")]
    {
        let message = rejected("file:///tmp?grop=true");
        assert!(message.contains("did you mean \"group\""), "{message}");
    }
}

#[test]
fn one_duration_grammar_everywhere() {
    for (base, duration) in backends() {
        for value in ["2", "1.5", "1500ms", "2s", "1m"] {
            accepted(&format!("{base}{duration}={value}"));
        }
        for value in ["soon", "-1", "2 parsecs", ""] {
            let message = rejected(&format!("{base}{duration}={value}"));
            assert!(message.contains(duration), "{value}: {message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}

#[test]
fn a_key_given_twice_is_rejected() {
    for (base, duration) in backends() {
        let message = rejected(&format!("{base}{duration}=2s&{duration}=3s"));
        assert!(message.contains("given twice"), "{message}");
    }
}

#[test]
fn client_crate_options_still_pass_through() {
    #[cfg(feature = "postgres")]
    accepted("postgres://u@127.0.0.1/db?sslmode=disable&connect_timeout=3&application_name=x");
    #[cfg(feature = "mysql")]
    accepted("mysql://u@127.0.0.1/db?prefer_socket=false&tcp_nodelay=true");
    #[cfg(feature = "mysql")]
    {
        // mysql_async's pool options would do nothing: tollgate pools its own connections.
        let message = rejected("mysql://u@127.0.0.1/db?pool_max=3");
        assert!(message.contains("\"pool_max\""), "{message}");
    }
    #[cfg(feature = "redis")]
    accepted("redis://127.0.0.1:6379/?protocol=resp3");
}

#[cfg(feature = "redis")]
#[test]
fn redlock_servers_must_be_distinct() {
    for twice in [
        "redis://127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6379/",
        // The same server however it is spelt: the default port, the host's case.
        "redis://cache-a,cache-b,cache-a:6379/",
        "redis://Cache-A:7000,cache-b,cache-a:7000/",
    ] {
        let message = rejected(twice);
        assert!(message.contains("listed twice"), "{twice}: {message}");
    }
    accepted("redis://127.0.0.1:6379,127.0.0.1:6380,127.0.0.1:6381/");
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_option_errors_name_the_option() {
    let message = rejected("postgres://u@h/db?sslmode=sometimes");
    assert!(message.contains("sslmode"), "{message}");
    let message = rejected("postgres://u@h/db?pool_size=0");
    assert!(message.contains("pool_size"), "{message}");
    accepted("postgres://u@h/db?sslmode=disable&idle_timeout=never");
}
