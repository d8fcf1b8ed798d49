//! [`text_enum!`](crate::text_enum!): enums of names with one text mapping.

/// An enum whose values are names, with one text mapping. Every kind and
/// status that either plane stores, sends or reads as a string is one
/// (provider kinds here; user, bot and meter report statuses in the control
/// plane): the same literal is its serde name, `as_str` and `parse`, so the
/// spelling in the database, in the API and in a config file cannot drift
/// apart.
///
/// ```
/// molt_config::text_enum! {
///     /// Where a thing is.
///     pub enum Phase {
///         Pending = "pending",
///         Done = "done",
///     }
/// }
/// assert_eq!(Phase::parse("done"), Some(Phase::Done));
/// assert_eq!(Phase::Pending.as_str(), "pending");
/// assert_eq!(serde_json::to_string(&Phase::Done).unwrap(), "\"done\"");
/// ```
///
/// The calling crate needs `serde` (with `derive`) as a dependency.
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                #[serde(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name, as stored and sent.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The value `text` names, if any.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
