//! Command-line values named by text: the enums of the library crates derive their names
//! (strum), and clap offers those names, with each one's doc comment as its help.

use std::fmt::Display;
use std::str::FromStr;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use strum::{EnumMessage, VariantArray};

/// The parser of a named enum's values.
pub fn named<T>() -> impl TypedValueParser<Value = T>
where
    T: VariantArray + EnumMessage + Display + FromStr + Clone + Send + Sync + 'static,
{
    let values = T::VARIANTS.iter().map(|value| {
        // A doc comment's lines as one paragraph; clap wraps it to the terminal.
        let help: Vec<&str> = value.get_documentation().unwrap_or_default().split_whitespace().collect();
        PossibleValue::new(value.to_string()).help(help.join(" "))
    });
    PossibleValuesParser::new(values).map(|name| match name.parse::<T>() {
        Ok(value) => value,
        Err(_) => unreachable!("{name} is one of the names the values were listed by"),
    })
}
