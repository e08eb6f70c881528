//! The attribute macros behind `weir_sdk::{filter, map, flat_map}`.
//!
//! Each turns one function into a plugin: it keeps the function as written
//! and generates, next to it, `struct Plugin` holding the parsed config,
//! an `impl weir_sdk::Transform for Plugin` whose `process` calls the
//! function, and `weir_sdk::export!(Plugin)`. Signature mistakes are
//! reported at the user's tokens, before any generated code is
//! type-checked. Use the macros through `weir-sdk`, which re-exports them;
//! the generated code names `::weir_sdk`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, ReturnType, Type};

/// Turns `fn(&Message, &Config) -> Result<bool>` into a filter plugin.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Form::Filter, attr, item)
}

/// Turns `fn(&Message, &Config) -> Result<Output>` into a map plugin.
#[proc_macro_attribute]
pub fn map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Form::Map, attr, item)
}

/// Turns `fn(&Message, &Config) -> Result<Vec<Output>>` (any
/// `IntoIterator<Item = Output>`) into a flat-map plugin.
#[proc_macro_attribute]
pub fn flat_map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Form::FlatMap, attr, item)
}

#[derive(Clone, Copy)]
enum Form {
    Filter,
    Map,
    FlatMap,
}

impl Form {
    fn attribute(self) -> &'static str {
        match self {
            Form::Filter => "#[weir_sdk::filter]",
            Form::Map => "#[weir_sdk::map]",
            Form::FlatMap => "#[weir_sdk::flat_map]",
        }
    }

    fn returns(self) -> &'static str {
        match self {
            Form::Filter => "weir_sdk::Result<bool>",
            Form::Map => "weir_sdk::Result<Output>",
            Form::FlatMap => "weir_sdk::Result<Vec<Output>>",
        }
    }
}

fn expand(form: Form, attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse::<ItemFn>(item) {
        Ok(function) => function,
        Err(e) => {
            let message = format!("{} goes on a function", form.attribute());
            return syn::Error::new(e.span(), message).to_compile_error().into();
        }
    };
    match parse_describe(attr).and_then(|docs| generate(form, &function, &docs)) {
        Ok(tokens) => tokens.into(),
        // Keeping the function makes the error the only diagnostic: its
        // imports stay used and callers still resolve.
        Err(error) => {
            let error = error.to_compile_error();
            // An async `fn(&Message)` would add a lifetime error of its own.
            let mut function = function;
            function.sig.asyncness = None;
            quote! {
                #error
                #[allow(dead_code, reason = "not a plugin until the error above is fixed")]
                #function
            }
            .into()
        }
    }
}

/// Parses `describe(key = "text", …)`, the optional config key docs.
fn parse_describe(attr: TokenStream) -> syn::Result<Vec<(String, LitStr)>> {
    let mut docs = Vec::new();
    let parser = syn::meta::parser(|meta| {
        if !meta.path.is_ident("describe") {
            return Err(meta.error("unknown argument; expected `describe(key = \"…\", …)`"));
        }
        meta.parse_nested_meta(|key| {
            let name = key
                .path
                .get_ident()
                .ok_or_else(|| key.error("expected a config key name"))?
                .to_string();
            docs.push((name, key.value()?.parse::<LitStr>()?));
            Ok(())
        })
    });
    syn::parse::Parser::parse(parser, attr)?;
    Ok(docs)
}

fn generate(form: Form, function: &ItemFn, docs: &[(String, LitStr)]) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    let usage = format!(
        "{} expects `fn {}(msg: &Message, config: &Config) -> {}` (the config argument is optional)",
        form.attribute(),
        sig.ident,
        form.returns()
    );
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            format!(
                "{} cannot be async: the host calls it synchronously for every message",
                form.attribute()
            ),
        ));
    }
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new_spanned(
            constness,
            format!("{} cannot be const", form.attribute()),
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            format!("{} cannot be unsafe", form.attribute()),
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            format!("{} cannot have an ABI", form.attribute()),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!(
                "{} cannot be generic: the plugin's config and message types must be concrete",
                form.attribute()
            ),
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(variadic, usage));
    }

    let args: Vec<&FnArg> = sig.inputs.iter().collect();
    let config_type = match args.as_slice() {
        [msg] => {
            reference_type(msg, &usage)?;
            None
        }
        [msg, config] => {
            reference_type(msg, &usage)?;
            Some(reference_type(config, &usage)?)
        }
        [] => return Err(syn::Error::new(sig.paren_token.span.join(), usage)),
        [_, _, extra, ..] => return Err(syn::Error::new_spanned(extra, usage)),
    };
    let output_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => return Err(syn::Error::new_spanned(sig, usage)),
    };

    let name = &sig.ident;
    let (config_ty, call) = match config_type {
        Some(ty) => (
            quote!(#ty),
            quote_spanned!(output_span=> #name(msg, &self.config)?),
        ),
        None => (
            quote!(::weir_sdk::NoConfig),
            quote_spanned!(output_span=> #name(msg)?),
        ),
    };
    let (kind, body) = match form {
        Form::Filter => (
            quote!(Filter),
            quote_spanned! {output_span=>
                let keep: bool = #call;
                if keep {
                    out.pass();
                }
            },
        ),
        Form::Map => (
            quote!(Map),
            quote_spanned! {output_span=>
                let output: ::weir_sdk::Output = #call;
                out.emit(output);
            },
        ),
        Form::FlatMap => (
            quote!(FlatMap),
            quote_spanned! {output_span=>
                for output in #call {
                    let output: ::weir_sdk::Output = output;
                    out.emit(output);
                }
            },
        ),
    };
    let doc_keys = docs.iter().map(|(key, text)| quote!((#key, #text)));
    let struct_doc = format!(
        "The plugin generated by `{}` from [`{name}`]: holds the parsed config and \
         is exported as the component's `transform`.",
        form.attribute()
    );
    // Private, so any config type is visible enough for the `Transform`
    // impl (a `pub` struct would reject a private config type); the
    // function's module and its `tests` child can still name it.
    let plugin = syn::Ident::new("Plugin", Span::call_site());

    Ok(quote! {
        #function

        #[doc = #struct_doc]
        struct #plugin {
            config: #config_ty,
        }

        impl ::weir_sdk::Transform for #plugin {
            type Config = #config_ty;
            const KIND: ::weir_sdk::Kind = ::weir_sdk::Kind::#kind;
            const CONFIG_DOCS: &'static [(&'static str, &'static str)] = &[#(#doc_keys),*];

            fn init(config: Self::Config) -> ::weir_sdk::Result<Self> {
                ::core::result::Result::Ok(Self { config })
            }

            fn process(
                &mut self,
                msg: &::weir_sdk::Message<'_>,
                out: &mut ::weir_sdk::Emitter<'_>,
            ) -> ::weir_sdk::Result<()> {
                #body
                ::core::result::Result::Ok(())
            }
        }

        ::weir_sdk::export!(#plugin);
    })
}

/// The referenced type of a `name: &T` argument; anything else (a `self`
/// receiver, a by-value or `&mut` argument) is reported at the argument.
fn reference_type<'a>(arg: &'a FnArg, usage: &str) -> syn::Result<&'a Type> {
    match arg {
        FnArg::Typed(typed) => match &*typed.ty {
            Type::Reference(r) if r.mutability.is_none() => Ok(&r.elem),
            other => Err(syn::Error::new_spanned(
                other,
                format!("expected a shared reference (`&…`); {usage}"),
            )),
        },
        FnArg::Receiver(receiver) => Err(syn::Error::new_spanned(receiver, usage.to_owned())),
    }
}
