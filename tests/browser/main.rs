//! The console in a real browser (issue 25): Debian's Chromium, headless, driven over
//! WebDriver by its chromedriver, presents a real client certificate (imported into an NSS
//! database from the PKCS#12 file `trmctl client issue --p12` makes, and chosen by the
//! Chromium policy `AutoSelectCertificateForUrls`) to real nodes over real HTTPS. Every page
//! visited is checked: its headers (CSP, `Cache-Control: no-store`), no inline script or
//! style in the DOM, nothing in browser storage, no personal data in its URL, and no WCAG
//! 2.1 A/AA violation found by axe-core.
//!
//! Not part of `cargo test --workspace`; built only with the feature `browser-suite`:
//!
//! ```text
//! sudo tests/browser/setup.sh          # once: chromium, chromium-driver, libnss3-tools,
//!                                      # the Chromium policy, axe-core (prints its path)
//! export TRM_AXE_JS=$PWD/target/axe/node_modules/axe-core/axe.min.js
//! cargo test -p trm-tests --features browser-suite --test browser
//! ```
//!
//! With `TRM_CONSOLE_SCREENSHOTS=docs/console` the suite also saves screenshots of the main
//! pages there (1200x800 PNG). Without Chromium, its driver, the NSS tools, the policy or
//! axe-core the suite fails and says how to install them: it never passes without a browser.
#![forbid(unsafe_code)]
#![cfg(unix)]

mod console;
mod harness;
