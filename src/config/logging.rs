//! The access-log keys: `access_log`, `access_log_path`, `access_log_format`.

/// Checks `access_log_path` and `access_log_format` against `access_log`;
/// errors name the key.
pub(super) fn validate_access_log(
    format: crate::access_log::Format,
    path: Option<&str>,
    template: Option<&str>,
) -> Result<
    (
        crate::access_log::Target,
        Option<crate::access_log::Template>,
    ),
    (&'static str, String),
> {
    use crate::access_log::{Format, Target, Template};
    let target = Target::parse(path.unwrap_or("-")).map_err(|m| ("access_log_path", m))?;
    let template = match template {
        None => None,
        Some(t) => Some(Template::parse(t).map_err(|m| ("access_log_format", m))?),
    };
    // Like the TLS files of [cluster]: a missing directory is a config
    // error `--check` reports (permissions show when the file is opened).
    if let Target::File(p) = &target
        && format.is_on()
        && let Some(dir) = p.parent()
        && !dir.is_dir()
    {
        return Err((
            "access_log_path",
            format!("directory `{}` does not exist", dir.display()),
        ));
    }
    match (format, &template) {
        (Format::Custom, None) => Err((
            "access_log",
            "\"custom\" needs `access_log_format` (an nginx log_format template)".into(),
        )),
        (Format::Combined | Format::Json, Some(_)) => Err((
            "access_log_format",
            "applies only with access_log = \"custom\"".into(),
        )),
        _ => Ok((target, template)),
    }
}
