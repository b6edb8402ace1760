#include "smtp/reply.hpp"

#include "smtp/text.hpp"

namespace portcullis::smtp {


const std::string& reply::text() const {
  static const std::string empty;
  return lines.empty() ? empty : lines.front();
}

std::string reply::wire() const {
  std::string out;
  const std::string code_str = std::to_string(code);
  const std::size_t n = lines.empty() ? 1 : lines.size();
  for (std::size_t i = 0; i < n; ++i) {
    out += code_str;
    out += (i + 1 < n) ? '-' : ' ';
    if (!status.empty()) {
      out += status;
      if (!lines.empty() && !lines[i].empty()) out += ' ';
    }
    if (!lines.empty()) out += lines[i];
    out += "\r\n";
  }
  return out;
}

std::string reply::summary() const {
  std::string out = std::to_string(code);
  if (!status.empty()) out += ' ' + status;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    out += i == 0 ? " " : " / ";
    out += lines[i];
  }
  return out;
}

bool is_enhanced_status(std::string_view s) {
  // class "." subject "." detail; subject and detail 1-3 digits (RFC 3463 §2)
  if (s.size() < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return false;
  std::size_t i = 2;
  for (int part = 0; part < 2; ++part) {
    std::size_t start = i;
    while (i < s.size() && is_digit(s[i])) ++i;
    if (i == start || i - start > 3) return false;
    if (part == 0) {
      if (i >= s.size() || s[i] != '.') return false;
      ++i;
    }
  }
  return i == s.size();
}

bool is_safe_reply_text(std::string_view s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return false;
  return true;
}

std::string sanitized_reply_text(std::string_view text, std::size_t max_octets) {
  std::string out(text.substr(0, max_octets));
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (u == '\t')
      c = ' ';
    else if (u < 0x20 || u >= 0x7f)
      c = '?';
  }
  return out;
}

reply_parser::state reply_parser::feed_line(std::string_view line) {
  // RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
  //                Reply-code = %x32-35 %x30-35 %x30-39
  if (line.size() < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' || !is_digit(line[2]))
    return state::malformed;
  const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (started_ && code != building_.code) {
    // RFC 5321 §4.2.1 has every line carry the same code; when they differ,
    // the last line's decides, as in Postfix's SMTP client (smtp_chat_resp):
    // the client hears what it would have heard from the upstream directly.
    building_.code = code;
    codes_differed_ = true;
  }
  bool last = true;
  if (line.size() > 3) {
    if (line[3] == '-')
      last = false;
    else if (line[3] != ' ')
      return state::malformed;
  }
  std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view{};
  const std::string_view verbatim = text;
  // Keep the enhanced code apart when every line carries one of the reply's class.
  std::string_view status;
  if (auto sp = text.find(' '); is_enhanced_status(text.substr(0, sp)) && text[0] == line[0]) {
    status = text.substr(0, sp);
    text = sp == std::string_view::npos ? std::string_view{} : text.substr(sp + 1);
  }
  if (!started_) {
    building_ = reply{};
    building_.code = code;
    codes_differed_ = false;
    building_.status = std::string(status);
    started_ = true;
  } else if (building_.status != status) {
    // Mixed status codes: keep text verbatim without separating the status,
    // the earlier lines' included (cut again: the status is now text).
    if (!building_.status.empty()) {
      for (auto& l : building_.lines)
        l = sanitized_reply_text(l.empty() ? building_.status : building_.status + ' ' + l, max_reply_text({}));
      building_.status.clear();
    }
    text = verbatim;
  }
  building_.lines.push_back(sanitized_reply_text(text, max_reply_text(building_.status)));
  return last ? state::complete : state::need_more;
}

reply reply_parser::take() {
  started_ = false;
  return std::move(building_);
}

}  // namespace portcullis::smtp

namespace portcullis::smtp {

reply with_status(reply r, std::string_view success) {
  if (!r.status.empty() || r.code == 354) return r;
  if (r.code < 400)
    r.status = std::string(success);
  else
    r.status = r.code < 500 ? "4.0.0" : "5.0.0";
  return r;
}

std::string_view name(reply_to what) {
  switch (what) {
    case reply_to::greeting: return "greeting";
    case reply_to::ehlo: return "EHLO";
    case reply_to::helo: return "HELO";
    case reply_to::starttls: return "STARTTLS";
    case reply_to::xclient: return "XCLIENT";
    case reply_to::xforward: return "XFORWARD";
    case reply_to::mail: return "MAIL";
    case reply_to::rcpt: return "RCPT";
    case reply_to::data: return "DATA";
    case reply_to::end_of_data: return "end of data";
    case reply_to::rset: return "RSET";
    case reply_to::quit: return "QUIT";
  }
  return "?";
}

reply_fit fit(reply_to what, int code) {
  if (code >= 400 && code <= 599) return reply_fit::refusal;
  int success = 0, also = 0;
  switch (what) {
    case reply_to::greeting:
    case reply_to::starttls:
    case reply_to::xclient: success = 220; break;
    case reply_to::ehlo:
    case reply_to::helo:
    case reply_to::xforward:
    case reply_to::mail:
    case reply_to::end_of_data:
    case reply_to::rset: success = 250; break;
    case reply_to::rcpt: success = 250, also = 251; break;  // 251: "will forward" (§3.4)
    case reply_to::data: success = 354; break;
    case reply_to::quit: success = 221; break;
  }
  return code == success || (also && code == also) ? reply_fit::success : reply_fit::out_of_place;
}

}  // namespace portcullis::smtp
