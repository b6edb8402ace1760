#include "session/received_header.hpp"

#include "net/network.hpp"

namespace portcullis {

namespace {

// The HELO name goes into a header: keep it to what a domain or literal may hold.
std::string header_safe_helo(const std::string& helo) {
  std::string out;
  for (char c : helo) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::string_view(".-_:[]").find(c) != std::string_view::npos;
    out += ok ? c : '_';
  }
  return out.empty() ? "unknown" : out;
}

// RFC 3848 §2-4 and RFC 6531 §4.3: SMTP, ESMTP, then S for TLS, A for AUTH.
std::string protocol_name(const connection_state& conn, const transaction& tx) {
  if (!conn.esmtp) return "SMTP";
  std::string p = tx.options.smtputf8 ? "UTF8SMTP" : "ESMTP";
  if (conn.tls) p += 'S';
  if (conn.auth_user) p += 'A';
  return p;
}

}  // namespace

std::string received_header(const connection_state& conn, const transaction& tx, const std::string& hostname,
                            std::time_t now) {
  std::tm tm{};
  gmtime_r(&now, &tm);
  char date[64];
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
  std::string h = "Received: from " + header_safe_helo(conn.helo) + " (" + conn.client_literal + ")";
  // The TLS details as a comment, as Postfix writes them.
  if (conn.tls)
    h += "\r\n\t(using " + conn.tls_version + " with cipher " + conn.tls_cipher + " (" + std::to_string(conn.tls_bits) +
         "/" + std::to_string(conn.tls_bits) + " bits))";
  h += "\r\n\tby " + hostname + " (Portcullis) with " + protocol_name(conn, tx) + " id " + tx.id;
  // Only a single recipient is named: more would disclose Bcc recipients.
  if (tx.recipients.size() == 1) h += "\r\n\tfor <" + tx.recipients.front().str() + ">";
  h += "; ";
  h += date;
  h += "\r\n";
  return h;
}

}  // namespace portcullis
