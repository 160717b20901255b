//! What a TLS connection trusts, shared by source and destination connections: the peer
//! option `sslrootcert` names a PEM file of certificate authorities on Ferry's host, or
//! `system` for the operating system's store.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::peer::SYSTEM_ROOT_CERTS;

/// The one cryptography provider Ferry builds with (ring: quick to compile, no C toolchain).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The authorities `sslrootcert` names (`None` means the system's); the error says why none
/// could be used, for a message that names the option.
pub fn root_store(sslrootcert: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let source = sslrootcert.unwrap_or(SYSTEM_ROOT_CERTS);
    let certs: Vec<CertificateDer<'static>> = if source == SYSTEM_ROOT_CERTS {
        rustls_native_certs::load_native_certs().certs
    } else {
        CertificateDer::pem_file_iter(source)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("could not read sslrootcert {source}: {e}"))?
    };
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(if source == SYSTEM_ROOT_CERTS {
            "no trusted certificate authorities were found on this host (sslrootcert = 'system')"
                .into()
        } else {
            format!("sslrootcert {source} holds no usable PEM certificate")
        });
    }
    Ok(store)
}

/// The rustls error behind an error, if a TLS handshake is what failed.
pub fn find_rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    // An io::Error's `source()` skips the error it wraps (which may be another io::Error):
    // look inside it directly.
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(tls) = find_rustls_error(inner) {
            return Some(tls);
        }
    }
    e.source().and_then(find_rustls_error)
}

/// What to change when the server's certificate failed its check (`None` for other TLS
/// failures): connect by another name (`by_name` adds what else may be done), or check what
/// is trusted (`trusted` names it).
pub fn certificate_hint(
    e: &rustls::Error,
    host: &str,
    trusted: &str,
    by_name: &str,
) -> Option<String> {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => Some(format!(
            "The server's certificate does not name \"{host}\". Connect by a name the \
             certificate lists{by_name}."
        )),
        rustls::Error::InvalidCertificate(_) => Some(format!(
            "The server's certificate could not be verified against {trusted}. Check \
             sslrootcert, or the server's certificate and its validity dates."
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_and_empty_root_files_are_named() {
        let e = root_store(Some("/nonexistent/root.crt")).unwrap_err();
        assert!(e.contains("/nonexistent/root.crt"), "{e}");
        let path = std::env::temp_dir().join(format!("ferry-empty-{}.crt", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = root_store(Some(path.to_str().unwrap())).unwrap_err();
        assert!(e.contains("no usable PEM certificate"), "{e}");
        let _ = std::fs::remove_file(path);
    }
}
