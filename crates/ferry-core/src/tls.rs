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
