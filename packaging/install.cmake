# Installing (`cmake --install`) and the Debian package (CPack; scripts/package.sh).
# Included from CMakeLists.txt once the targets exist. Where each file goes, and
# how the installed daemon finds its Python package: docs/install.md.
#
# Every path below follows CMAKE_INSTALL_PREFIX (default /usr/local; the
# Debian package is configured with /usr), so `cmake --install build --prefix
# DIR` and DESTDIR stage a tree that runs where it lies.

set(portcullis_datadir "${CMAKE_INSTALL_DATADIR}/portcullis")
set(portcullis_docdir "${CMAKE_INSTALL_DOCDIR}")

# The config folder: /usr's is /etc (GNUInstallDirs' FULL_SYSCONFDIR), which
# install() takes only as an absolute path; under any other prefix it stays
# relative (PREFIX/etc), so that --prefix moves it with the rest.
if(CMAKE_INSTALL_FULL_SYSCONFDIR STREQUAL "${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_SYSCONFDIR}")
  set(portcullis_confdir "${CMAKE_INSTALL_SYSCONFDIR}/portcullis")
  set(portcullis_confdir_at_install "\${CMAKE_INSTALL_PREFIX}/${portcullis_confdir}")
else()
  set(portcullis_confdir "${CMAKE_INSTALL_FULL_SYSCONFDIR}/portcullis")
  set(portcullis_confdir_at_install "${portcullis_confdir}")
endif()

# Absolute paths as the installed system sees them (in the config's comments and the maintainer scripts).
set(PORTCULLIS_CONFIG_FILE "${CMAKE_INSTALL_FULL_SYSCONFDIR}/portcullis/portcullis.toml")
set(PORTCULLIS_POLICY_DIR "${CMAKE_INSTALL_FULL_DATADIR}/portcullis/policies")
set(PORTCULLIS_PYTHON_INSTALL_DIR "${CMAKE_INSTALL_FULL_LIBDIR}/portcullis/python")
set(PORTCULLIS_DOC_DIR "${CMAKE_INSTALL_FULL_DOCDIR}")

# The daemon.
install(TARGETS portcullis RUNTIME DESTINATION "${CMAKE_INSTALL_SBINDIR}")

# Its private Python folder, not the system's site-packages: the `portcullis`
# package, and the _portcullis_core extension module for plain Python (a
# policy's unit tests: PYTHONPATH=that folder). The daemon has its own
# _portcullis_core built in and finds this folder from its own path
# (PORTCULLIS_INSTALLED_PYTHON_DIR, CMakeLists.txt).
install(DIRECTORY python/portcullis DESTINATION "${PORTCULLIS_INSTALL_PYTHONDIR}"
        FILES_MATCHING PATTERN "*.py" PATTERN "py.typed" PATTERN "__pycache__" EXCLUDE)
install(TARGETS portcullis_core_module LIBRARY DESTINATION "${PORTCULLIS_INSTALL_PYTHONDIR}")

# The ready-made policies, listed by absolute path in [policy] files.
install(DIRECTORY policies/ DESTINATION "${portcullis_datadir}/policies"
        FILES_MATCHING PATTERN "*.py" PATTERN "README.md" PATTERN "__pycache__" EXCLUDE)

# The config: a standalone one for the installed paths (packaging/portcullis.toml.in),
# not examples/portcullis.toml, which delivers into a Maildir next to itself.
# An existing one is kept: `cmake --install` over a running system must not
# overwrite the operator's file (the Debian package marks it a conffile instead).
configure_file(packaging/portcullis.toml.in "${CMAKE_BINARY_DIR}/packaging/portcullis.toml" @ONLY)
install(CODE "
  if(EXISTS \"\$ENV{DESTDIR}${portcullis_confdir_at_install}/portcullis.toml\")
    message(STATUS \"Keeping: \$ENV{DESTDIR}${portcullis_confdir_at_install}/portcullis.toml\")
  else()
    file(INSTALL \"${CMAKE_BINARY_DIR}/packaging/portcullis.toml\" DESTINATION \"${portcullis_confdir_at_install}\")
  endif()")

# Documentation: the README and docs/ keep their relative links; the example deployments.
install(FILES README.md DESTINATION "${portcullis_docdir}")
install(DIRECTORY docs/ DESTINATION "${portcullis_docdir}/docs" FILES_MATCHING PATTERN "*.md")
install(DIRECTORY examples/ DESTINATION "${portcullis_docdir}/examples" PATTERN "Maildir" EXCLUDE)

# Files installed compressed, as Debian wants them (man and zless read them
# either way): `src` gzipped to `out` in the build tree, installed in `dest`.
set(portcullis_gzipped)
function(portcullis_install_gzipped src out dest)
  add_custom_command(OUTPUT "${out}"
                     COMMAND sh -c "gzip -9n < \"$1\" > \"$2\"" sh "${src}" "${out}"
                     DEPENDS "${src}" VERBATIM)
  install(FILES "${out}" DESTINATION "${dest}")
  set(portcullis_gzipped ${portcullis_gzipped} "${out}" PARENT_SCOPE)
endfunction()

# Man pages.
file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/man")
foreach(page portcullis.8 portcullis.toml.5)
  string(REGEX MATCH "[0-9]$" section "${page}")
  portcullis_install_gzipped("${PROJECT_SOURCE_DIR}/man/${page}" "${CMAKE_BINARY_DIR}/man/${page}.gz"
                             "${CMAKE_INSTALL_MANDIR}/man${section}")
endforeach()
# The changelog, in Debian's format (a native package: changelog.gz, Debian
# policy 12.7); its newest entry is the project's version (tests/e2e/test_install.py).
file(MAKE_DIRECTORY "${CMAKE_BINARY_DIR}/packaging")
portcullis_install_gzipped("${PROJECT_SOURCE_DIR}/packaging/debian/changelog"
                           "${CMAKE_BINARY_DIR}/packaging/changelog.gz" "${portcullis_docdir}")
add_custom_target(portcullis_gzipped ALL DEPENDS ${portcullis_gzipped})

# ---- systemd (branch ops-systemd): the unit and its sysusers.d user, installed
# when the tree has them. The unit names /usr/sbin and /etc; an install under
# another prefix gets its own paths written in.
set(portcullis_unit "${PROJECT_SOURCE_DIR}/packaging/systemd/portcullis.service")
if(EXISTS "${portcullis_unit}")
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${portcullis_unit}")
  file(READ "${portcullis_unit}" unit_text)
  string(REPLACE "/usr/sbin/portcullis" "${CMAKE_INSTALL_FULL_SBINDIR}/portcullis" unit_text "${unit_text}")
  string(REPLACE "/etc/portcullis/" "${CMAKE_INSTALL_FULL_SYSCONFDIR}/portcullis/" unit_text "${unit_text}")
  file(WRITE "${CMAKE_BINARY_DIR}/packaging/portcullis.service" "${unit_text}")
  install(FILES "${CMAKE_BINARY_DIR}/packaging/portcullis.service" DESTINATION lib/systemd/system)
endif()
set(portcullis_sysusers "${PROJECT_SOURCE_DIR}/packaging/systemd/portcullis.sysusers")
if(EXISTS "${portcullis_sysusers}")
  install(FILES "${portcullis_sysusers}" DESTINATION lib/sysusers.d RENAME portcullis.conf)
endif()
# ---- end of systemd

# ---- The Debian package: `cpack -G DEB` in a build folder (scripts/package.sh
# configures build-pkg/ with the prefix /usr and runs it).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME portcullis)
set(CPACK_PACKAGE_VENDOR Portcullis)
set(CPACK_PACKAGE_CONTACT "Portcullis maintainers <dev@portcullis.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "SMTP policy proxy with Python hooks, SPF, DKIM and DMARC")
set(CPACK_PACKAGE_DESCRIPTION
    "Portcullis stands in front of a mail server, speaks SMTP to clients and relays
every transaction to it in lock step, so nothing is queued in the proxy. It
checks SPF, DKIM, DMARC and ARC, and calls the operator's Python policies at
every stage of the SMTP dialogue to accept, rewrite or reject mail.")
# The package lays out exactly what `cmake --install` does for this build's
# prefix: the daemon's relative path to its Python folder and the config's
# absolute paths were fixed when the build was configured.
set(CPACK_PACKAGING_INSTALL_PREFIX "${CMAKE_INSTALL_PREFIX}")
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # portcullis_VERSION_ARCH.deb
set(CPACK_DEBIAN_PACKAGE_SECTION mail)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# The shared libraries (libpython3.11, libssl3, libunbound8, ...) come from
# dpkg-shlibdeps; Debian's Python for the python3-* packages policies import;
# adduser for postinst.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "python3 (>= 3.11), adduser")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "python3-redis")  # [store] url = "redis://..."
configure_file(packaging/debian/conffiles.in "${CMAKE_BINARY_DIR}/packaging/debian/conffiles" @ONLY)
configure_file(packaging/debian/postinst.in "${CMAKE_BINARY_DIR}/packaging/debian/postinst" @ONLY)
configure_file(packaging/debian/prerm.in "${CMAKE_BINARY_DIR}/packaging/debian/prerm" @ONLY)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA "${CMAKE_BINARY_DIR}/packaging/debian/conffiles"
    "${CMAKE_BINARY_DIR}/packaging/debian/postinst" "${CMAKE_BINARY_DIR}/packaging/debian/prerm")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)  # scripts 0755, conffiles 0644
# `make package_source`: the tree without build folders and git.
set(CPACK_SOURCE_GENERATOR TGZ)
set(CPACK_SOURCE_IGNORE_FILES "/[.]git/" "/build[^/]*/" "__pycache__" "/examples/Maildir/")
include(CPack)
