# Estimator and estimate text tests (label core).
add_executable(estimator_test ${CMAKE_CURRENT_LIST_DIR}/estimator_test.cc)
videogen_warnings(estimator_test)
target_link_libraries(estimator_test PRIVATE videogen_estimator GTest::gmock
                      GTest::gtest_main)
gtest_discover_tests(estimator_test PROPERTIES LABELS core)
if(VIDEOGEN_SANITIZER STREQUAL "thread")
  target_sources(estimator_test PRIVATE ${CMAKE_CURRENT_LIST_DIR}/tsan_absl_mutex.cc)
  target_link_libraries(estimator_test PRIVATE ${CMAKE_DL_LIBS})
endif()
