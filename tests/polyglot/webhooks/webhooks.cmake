# Webhook receivers in Node (npm `standardwebhooks`) and Python (hmac)
# verifying real deliveries; included from ../CMakeLists.txt.
#   ctest -R polyglot_webhooks
if(TARGET videogen-server AND TARGET videogen-sim)
  add_test(NAME polyglot_webhooks
           COMMAND ${CMAKE_COMMAND} -E env
                   VIDEOGEN_SERVER_BIN=$<TARGET_FILE:videogen-server>
                   VIDEOGEN_SIM_BIN=$<TARGET_FILE:videogen-sim>
                   NODE=${POLYGLOT_NODE}
                   /usr/bin/python3
                   ${CMAKE_CURRENT_LIST_DIR}/test_webhooks_polyglot.py
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(polyglot_webhooks PROPERTIES LABELS polyglot
                       TIMEOUT 300)
endif()
