// Shared by the targets: the shipped route table and token keys, built once.
use edgegate::config::Config;
use edgegate::route::RouteTable;

pub fn config() -> &'static Config {
    static C: once_cell::sync::Lazy<Config> = once_cell::sync::Lazy::new(|| {
        let secret = std::env::temp_dir().join("edgegate-fuzz-secret");
        std::fs::write(&secret, "fuzzing-secret-0123456789abcdef-0123").expect("secret");
        let text = include_str!("../../conf/edgegate.toml").replace(
            "secret_env = \"EDGEGATE_JWT_SECRET\"",
            &format!("secret_file = {:?}", secret.display().to_string()),
        );
        Config::parse(&text).expect("config")
    });
    &C
}

#[allow(dead_code)]
pub fn table() -> &'static RouteTable {
    static T: once_cell::sync::Lazy<RouteTable> =
        once_cell::sync::Lazy::new(|| RouteTable::new(config()).expect("table"));
    &T
}
