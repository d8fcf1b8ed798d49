//! Unknown fields: the wire types accept them, and each reader decides.
//!
//! A file a person wrote rejects them, each with its path (a typo must be
//! an error, never a silently ignored setting); so does the control plane's
//! API. A snapshot from a control plane newer than this data plane may carry
//! fields this build does not know yet: it is read without them, and they
//! are reported (forward compatibility: the planes are upgraded one at a
//! time). The wire types therefore carry no `deny_unknown_fields`; these
//! readers record every field the types did not take, with
//! `serde_ignored`, and the caller turns them into errors or warnings.

use serde::de::DeserializeOwned;

/// TOML text as `T`, and the paths of the fields `T` has no place for.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<(T, Vec<String>), toml::de::Error> {
    let mut unknown = Vec::new();
    let value = serde_ignored::deserialize(toml::Deserializer::new(text), |path| {
        unknown.push(path_text(&path));
    })?;
    Ok((value, unknown))
}

/// JSON as `T`, and the paths of the fields `T` has no place for.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Vec<String>), serde_json::Error> {
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_ignored::deserialize(&mut de, |path| unknown.push(path_text(&path)))?;
    de.end()?;
    Ok((value, unknown))
}

/// The path in this crate's error style: `models[2].name`, `limits.users[0].x`.
fn path_text(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", path_text(parent)),
        Path::Map { parent, key } => {
            let parent = path_text(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => path_text(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Doc {
        #[allow(dead_code)]
        items: Vec<Item>,
        #[allow(dead_code)]
        inner: Option<Item>,
    }

    #[derive(Debug, Deserialize)]
    struct Item {
        #[allow(dead_code)]
        name: String,
    }

    #[test]
    fn paths_name_tables_lists_and_options() {
        let (_, unknown) = from_json::<Doc>(
            br#"{"items":[{"name":"a"},{"name":"b","nmae":1}],"inner":{"name":"c","x":{"y":2}},"top":true}"#,
        )
        .unwrap();
        assert_eq!(unknown, ["items[1].nmae", "inner.x", "top"]);
        let (_, unknown) =
            from_toml::<Doc>("top = 1\n[[items]]\nname = \"a\"\nextra = 2\n").unwrap();
        assert_eq!(unknown, ["top", "items[0].extra"]);
    }

    #[test]
    fn syntax_and_type_errors_stay_errors() {
        assert!(from_json::<Doc>(br#"{"items":[{"name":1}]}"#).is_err());
        assert!(from_json::<Doc>(br#"{"items":[]} trailing"#).is_err());
        assert!(from_toml::<Doc>("items = 3").is_err());
    }
}
