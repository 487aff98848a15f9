# The completion-time estimator (design.md §10) and its human-readable text.
# Uses only the store/ header; the server links a store library.
add_library(videogen_estimator STATIC
  ${CMAKE_CURRENT_LIST_DIR}/estimator.cc
  ${CMAKE_CURRENT_LIST_DIR}/estimate_text.cc)
videogen_warnings(videogen_estimator)
target_include_directories(videogen_estimator PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(videogen_estimator PUBLIC
  videogen_proto
  absl::status
  absl::statusor
  absl::synchronization
  absl::time
  absl::flat_hash_map
  absl::strings)
