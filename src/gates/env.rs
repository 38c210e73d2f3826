//! `${NAME}` placeholders: how a check or a notification gets a secret without the plan
//! holding it. Pure: the environment is a lookup function.
//!
//! **Invariant:** an expanded value never goes back into anything printed or journaled; only
//! the template (with its placeholders) is shown.

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`${{` without a closing `}}`")]
    Unclosed,
    #[error(
        "`${{{0}}}` is not an environment variable name (letters, digits and _, not starting with a digit)"
    )]
    BadName(String),
    #[error("the environment variable {0} is not set")]
    Unset(String),
}

/// Whether `name` can be an environment variable's name.
pub fn is_env_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first == '_' || first.is_ascii_alphabetic())
        && characters.all(|character| character == '_' || character.is_ascii_alphanumeric())
}

/// The names a template refers to, in order; an error for a malformed placeholder.
pub fn placeholders(template: &str) -> Result<Vec<String>, TemplateError> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(TemplateError::Unclosed)?;
        let name = &after[..end];
        if !is_env_name(name) {
            return Err(TemplateError::BadName(name.to_string()));
        }
        names.push(name.to_string());
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// The template with every `${NAME}` replaced by `lookup(NAME)`.
pub fn expand(
    template: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(TemplateError::Unclosed)?;
        let name = &after[..end];
        if !is_env_name(name) {
            return Err(TemplateError::BadName(name.to_string()));
        }
        let value = lookup(name).ok_or_else(|| TemplateError::Unset(name.to_string()))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand`] with the process environment.
pub fn expand_from_env(template: &str) -> Result<String, TemplateError> {
    expand(template, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_and_errors_name_the_variable() {
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cret".to_string());
        assert_eq!(
            expand("Bearer ${TOKEN}!", lookup).as_deref(),
            Ok("Bearer s3cret!")
        );
        assert_eq!(
            expand("no placeholder $x {y}", lookup).as_deref(),
            Ok("no placeholder $x {y}")
        );
        assert_eq!(
            expand("${MISSING}", lookup),
            Err(TemplateError::Unset("MISSING".into()))
        );
        assert_eq!(expand("${TOKEN", lookup), Err(TemplateError::Unclosed));
        assert_eq!(
            placeholders("${1X}"),
            Err(TemplateError::BadName("1X".into()))
        );
        assert_eq!(
            placeholders("http://h/${A}/${B_2}").unwrap(),
            vec!["A".to_string(), "B_2".to_string()]
        );
        assert!(is_env_name("_X1") && !is_env_name("") && !is_env_name("A-B"));
    }
}
